//! One read transfer as a state machine.

use crate::Packet;
use std::time::{Duration, Instant};

/// Server-side limits on what a client may negotiate.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest block size accepted (RFC 2348 allows up to 65464).
    pub max_blksize: u16,
    /// Largest window accepted (RFC 7440).
    pub max_windowsize: u16,
    /// Retransmission timeout when the client does not negotiate one.
    pub default_timeout: Duration,
    /// Upper bound of the backed-off timeout.
    pub max_timeout: Duration,
    /// Retransmissions of one window before giving up.
    pub max_retries: u32,
    /// Retransmissions before the client has acknowledged anything. A read
    /// request's source address is not verified (UDP), so until an ACK
    /// proves the client is there, the server sends the first answer at
    /// most this many more times: a forged request cannot aim more than a
    /// packet or two at someone else.
    pub max_unverified_retries: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_blksize: 65464,
            max_windowsize: 64,
            default_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(8),
            max_retries: 6,
            max_unverified_retries: 1,
        }
    }
}

/// What the caller must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes (an OACK).
    Send(Vec<u8>),
    /// Send DATA `block` with `len` bytes of the file from `offset`.
    SendBlock { block: u16, offset: u64, len: usize },
    /// Every block was acknowledged.
    Finished,
    /// The transfer is over without success.
    Failed(TransferError),
}

/// Why a transfer ended early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    #[error("no acknowledgement after {0} retransmissions")]
    TimedOut(u32),
    #[error("client aborted: {0}")]
    ClientError(String),
}

/// The state of one read transfer.
#[derive(Debug)]
pub struct Transfer {
    size: u64,
    blksize: u64,
    window: u64,
    base_timeout: Duration,
    timeout: Duration,
    limits: Limits,
    total_blocks: u64,
    /// Blocks acknowledged so far (block indices are 1-based, unbounded).
    acked: u64,
    /// Highest block index sent.
    sent_up_to: u64,
    /// The OACK, until the client acknowledges it with ACK 0.
    oack: Option<Vec<u8>>,
    retries: u32,
    /// Whether the client has acknowledged anything (and so is really there).
    verified: bool,
    deadline: Instant,
    done: bool,
}

fn parse_num(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

impl Transfer {
    /// Starts a transfer of `size` bytes for a request with `options`.
    /// Options Plinth does not know, or values out of range, are left out of
    /// the OACK, which tells the client they were not accepted (RFC 2347).
    pub fn start(options: &[(&[u8], &[u8])], size: u64, limits: &Limits, now: Instant) -> (Transfer, Vec<Action>) {
        let mut blksize = 512u64;
        let mut window = 1u64;
        let mut timeout = limits.default_timeout;
        let mut accepted: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (name, value) in options {
            let name = name.to_ascii_lowercase();
            match (name.as_slice(), parse_num(value)) {
                (b"blksize", Some(v)) if v >= 8 => {
                    blksize = v.min(limits.max_blksize as u64);
                    accepted.push((name, blksize.to_string().into_bytes()));
                }
                (b"tsize", Some(_)) => accepted.push((name, size.to_string().into_bytes())),
                (b"timeout", Some(v)) if (1..=255).contains(&v) => {
                    timeout = Duration::from_secs(v);
                    accepted.push((name, v.to_string().into_bytes()));
                }
                (b"windowsize", Some(v)) if (1..=65535).contains(&v) => {
                    window = v.min(limits.max_windowsize as u64);
                    accepted.push((name, window.to_string().into_bytes()));
                }
                _ => {}
            }
        }
        let oack = (!accepted.is_empty()).then(|| {
            let opts: Vec<(&[u8], &[u8])> = accepted.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
            let mut buf = Vec::new();
            Packet::Oack { options: opts }.encode(&mut buf);
            buf
        });
        let mut t = Transfer {
            size,
            blksize,
            window,
            base_timeout: timeout,
            timeout,
            limits: limits.clone(),
            // A final short (possibly empty) block always ends the transfer.
            total_blocks: size / blksize + 1,
            acked: 0,
            sent_up_to: 0,
            oack,
            retries: 0,
            verified: false,
            deadline: now + timeout,
            done: false,
        };
        let actions = match &t.oack {
            Some(o) => vec![Action::Send(o.clone())],
            None => t.send_window(now),
        };
        (t, actions)
    }

    /// The negotiated block size.
    pub fn blksize(&self) -> usize {
        self.blksize as usize
    }

    /// The negotiated window size.
    pub fn windowsize(&self) -> u16 {
        self.window as u16
    }

    /// When [`Transfer::on_timeout`] should next be called.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the transfer has ended.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn send_window(&mut self, now: Instant) -> Vec<Action> {
        let last = (self.acked + self.window).min(self.total_blocks);
        let actions = (self.acked + 1..=last)
            .map(|i| {
                let offset = (i - 1) * self.blksize;
                let len = self.blksize.min(self.size.saturating_sub(offset)) as usize;
                // Block numbers roll over to 0 after 65535, as tftp-hpa and iPXE expect.
                Action::SendBlock { block: i as u16, offset, len }
            })
            .collect();
        self.sent_up_to = last;
        self.deadline = now + self.timeout;
        actions
    }

    /// Handles a packet from the client's transfer id.
    pub fn on_packet(&mut self, packet: &Packet<'_>, now: Instant) -> Vec<Action> {
        if self.done {
            return Vec::new();
        }
        match packet {
            Packet::Ack { block } => {
                if self.oack.is_some() {
                    if *block != 0 {
                        return Vec::new();
                    }
                    self.oack = None;
                } else {
                    // Find the in-flight block this ACK names. ACKs of
                    // older blocks are duplicates and are ignored: answering
                    // them would double the traffic (Sorcerer's Apprentice).
                    match (self.acked + 1..=self.sent_up_to).find(|i| *i as u16 == *block) {
                        Some(i) => self.acked = i,
                        None => return Vec::new(),
                    }
                }
                self.retries = 0;
                self.verified = true;
                self.timeout = self.base_timeout;
                if self.acked == self.total_blocks {
                    self.done = true;
                    return vec![Action::Finished];
                }
                self.send_window(now)
            }
            Packet::Error { message, .. } => {
                self.done = true;
                vec![Action::Failed(TransferError::ClientError(String::from_utf8_lossy(message).into_owned()))]
            }
            _ => Vec::new(),
        }
    }

    /// Handles the passage of time: retransmits with backoff, or gives up.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        if self.done || now < self.deadline {
            return Vec::new();
        }
        self.retries += 1;
        let limit = if self.verified { self.limits.max_retries } else { self.limits.max_unverified_retries };
        if self.retries > limit {
            self.done = true;
            return vec![Action::Failed(TransferError::TimedOut(limit))];
        }
        self.timeout = (self.timeout * 2).min(self.limits.max_timeout.max(self.base_timeout));
        if let Some(o) = &self.oack {
            self.deadline = now + self.timeout;
            return vec![Action::Send(o.clone())];
        }
        self.send_window(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(actions: &[Action]) -> Vec<(u16, u64, usize)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SendBlock { block, offset, len } => Some((*block, *offset, *len)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lockstep_without_options_ends_with_a_short_block() {
        let now = Instant::now();
        let (mut t, a) = Transfer::start(&[], 1000, &Limits::default(), now);
        assert_eq!(blocks(&a), [(1, 0, 512)]);
        let a = t.on_packet(&Packet::Ack { block: 1 }, now);
        assert_eq!(blocks(&a), [(2, 512, 488)]);
        assert_eq!(t.on_packet(&Packet::Ack { block: 2 }, now), [Action::Finished]);
        assert!(t.is_done());
    }

    #[test]
    fn a_multiple_of_the_block_size_ends_with_an_empty_block() {
        let now = Instant::now();
        let (mut t, a) = Transfer::start(&[], 1024, &Limits::default(), now);
        assert_eq!(blocks(&a), [(1, 0, 512)]);
        t.on_packet(&Packet::Ack { block: 1 }, now);
        let a = t.on_packet(&Packet::Ack { block: 2 }, now);
        assert_eq!(blocks(&a), [(3, 1024, 0)]);
        let (_, a) = Transfer::start(&[], 0, &Limits::default(), now);
        assert_eq!(blocks(&a), [(1, 0, 0)], "an empty file is one empty block");
    }

    #[test]
    fn options_are_acknowledged_then_data_starts_after_ack_0() {
        let now = Instant::now();
        let opts: &[(&[u8], &[u8])] =
            &[(b"BLKSIZE", b"1468"), (b"tsize", b"0"), (b"windowsize", b"4"), (b"colour", b"red"), (b"timeout", b"3")];
        let (mut t, a) = Transfer::start(opts, 10_000, &Limits::default(), now);
        let Action::Send(oack) = &a[0] else { panic!("{a:?}") };
        let Packet::Oack { options } = Packet::parse(oack).unwrap() else { panic!() };
        assert_eq!(
            options,
            vec![(&b"blksize"[..], &b"1468"[..]), (b"tsize", b"10000"), (b"windowsize", b"4"), (b"timeout", b"3")],
            "unknown options are left out"
        );
        assert!(t.on_packet(&Packet::Ack { block: 1 }, now).is_empty(), "data waits for ACK 0");
        let a = t.on_packet(&Packet::Ack { block: 0 }, now);
        assert_eq!(blocks(&a), [(1, 0, 1468), (2, 1468, 1468), (3, 2936, 1468), (4, 4404, 1468)]);
        // The client saw a gap after block 2: resend from 3.
        let a = t.on_packet(&Packet::Ack { block: 2 }, now);
        assert_eq!(blocks(&a)[0], (3, 2936, 1468));
        assert_eq!(t.deadline(), now + Duration::from_secs(3));
    }

    #[test]
    fn out_of_range_options_are_clamped_or_refused() {
        let now = Instant::now();
        let opts: &[(&[u8], &[u8])] = &[(b"blksize", b"99999"), (b"windowsize", b"1000"), (b"timeout", b"0")];
        let (t, _) = Transfer::start(opts, 1, &Limits::default(), now);
        assert_eq!((t.blksize(), t.windowsize()), (65464, 64));
        let (t, a) = Transfer::start(&[(b"blksize", b"4")], 1, &Limits::default(), now);
        assert_eq!(t.blksize(), 512);
        assert_eq!(blocks(&a).len(), 1, "nothing accepted: no OACK, data at once");
    }

    #[test]
    fn duplicate_acks_are_ignored() {
        let now = Instant::now();
        let (mut t, _) = Transfer::start(&[], 5000, &Limits::default(), now);
        assert_eq!(blocks(&t.on_packet(&Packet::Ack { block: 1 }, now)).len(), 1);
        assert!(t.on_packet(&Packet::Ack { block: 1 }, now).is_empty());
    }

    /// A request nobody acknowledges (its source address may be forged)
    /// gets its first answer once more, then nothing: a 16-byte request
    /// cannot make the server send more than two packets to a stranger.
    #[test]
    fn an_unacknowledged_request_is_answered_at_most_twice() {
        let now = Instant::now();
        for opts in [&[][..], &[(&b"windowsize"[..], &b"64"[..]), (b"blksize", b"1428")][..]] {
            let (mut t, first) = Transfer::start(opts, 1 << 20, &Limits::default(), now);
            let mut sent = first.len();
            let mut at = now;
            while !t.is_done() {
                at += Duration::from_secs(60);
                let a = t.on_timeout(at);
                sent += a.iter().filter(|a| matches!(a, Action::Send(_) | Action::SendBlock { .. })).count();
                assert!(sent <= 2, "{opts:?}: {sent} packets to an unverified peer");
            }
            assert_eq!(sent, 2, "{opts:?}");
        }
        // Once it acknowledges, the ordinary retries apply.
        let (mut t, _) = Transfer::start(&[], 5000, &Limits::default(), now);
        t.on_packet(&Packet::Ack { block: 1 }, now);
        let mut at = now;
        let mut retransmits = 0;
        while !t.is_done() {
            at += Duration::from_secs(60);
            retransmits += t.on_timeout(at).iter().filter(|a| matches!(a, Action::SendBlock { .. })).count();
        }
        assert_eq!(retransmits, Limits::default().max_retries as usize);
    }

    #[test]
    fn timeouts_retransmit_with_backoff_then_give_up() {
        let start = Instant::now();
        let limits = Limits { max_retries: 3, max_unverified_retries: 3, ..Limits::default() };
        let (mut t, _) = Transfer::start(&[], 5000, &limits, start);
        assert!(t.on_timeout(start).is_empty(), "not yet");
        let mut gaps = Vec::new();
        for _ in 0..3 {
            let now = t.deadline();
            let a = t.on_timeout(now);
            assert_eq!(blocks(&a), [(1, 0, 512)]);
            gaps.push(t.deadline() - now);
        }
        assert_eq!(gaps, [Duration::from_secs(2), Duration::from_secs(4), Duration::from_secs(8)]);
        assert_eq!(t.on_timeout(t.deadline()), [Action::Failed(TransferError::TimedOut(3))]);
    }

    #[test]
    fn block_numbers_roll_over_after_65535() {
        let now = Instant::now();
        let (mut t, _) = Transfer::start(&[(b"blksize", b"8")], 8 * 70_000, &Limits::default(), now);
        t.on_packet(&Packet::Ack { block: 0 }, now);
        for i in 1..=65535u32 {
            t.on_packet(&Packet::Ack { block: i as u16 }, now);
        }
        let a = t.on_packet(&Packet::Ack { block: 0 }, now);
        assert_eq!(blocks(&a), [(1, 65536 * 8, 8)], "ACK 0 after 65535 acknowledges block 65536");
    }

    #[test]
    fn a_client_error_ends_the_transfer() {
        let now = Instant::now();
        let (mut t, _) = Transfer::start(&[], 5000, &Limits::default(), now);
        let a = t.on_packet(&Packet::Error { code: 0, message: b"cancelled" }, now);
        assert_eq!(a, [Action::Failed(TransferError::ClientError("cancelled".into()))]);
        assert!(t.on_packet(&Packet::Ack { block: 1 }, now).is_empty());
    }
}
