//! The read-transfer state machine under arbitrary option sets, file sizes,
//! packets and timeouts: never panics, never sends past the end of the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_tftp::{Action, Limits, Packet, Transfer};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let size = u64::from(u32::from_be_bytes([data[0], data[1], data[2], data[3]]) % 4_000_000);
    let mut chunks = data[4..].split(|b| *b == 0xff);
    let request = chunks.next().unwrap_or_default();
    let mut rrq = b"\x00\x01f\x00octet\x00".to_vec();
    rrq.extend_from_slice(request);
    let options = match Packet::parse(&rrq) {
        Ok(Packet::Rrq { options, .. }) => options,
        _ => Vec::new(),
    };
    let mut now = Instant::now();
    let (mut t, mut actions) = Transfer::start(&options, size, &Limits::default(), now);
    for chunk in chunks.take(2000) {
        for a in &actions {
            if let Action::SendBlock { offset, len, .. } = a {
                assert!(offset + *len as u64 <= size, "block past the end");
            }
        }
        actions = if chunk.is_empty() {
            now += Duration::from_secs(20);
            t.on_timeout(now)
        } else {
            match Packet::parse(chunk) {
                Ok(p) => t.on_packet(&p, now),
                Err(_) => Vec::new(),
            }
        };
    }
});
