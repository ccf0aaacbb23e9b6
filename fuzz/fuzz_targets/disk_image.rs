//! What an image deploy reads from an image it was handed: any bytes as the
//! image's first MiB (its partition table) and as an image file in each
//! format, and any path under `/t/<token>/`. Nothing panics, a table names
//! at most its entries, and decoding stops at the writer's bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_agent::{deploy, gpt};
use std::io::Write;

/// A writer that refuses past 16 MiB, as a disk ends.
struct Bounded(usize);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        if self.0 > 16 << 20 { Err(std::io::Error::other("the disk is full")) } else { Ok(buf.len()) }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(table) = gpt::Table::parse(data) {
        assert!(table.partitions.len() <= 1024);
        if let Some(esp) = table.esp() {
            let option = gpt::load_option("Plinth", esp, "\\EFI\\BOOT\\BOOTX64.EFI");
            assert!(option.len() < 512);
        }
        let _ = table.root();
    }
    for format in ["raw", "raw.gz", "raw.xz", "raw.zst", "qcow2", "vmdk"] {
        let _ = deploy::decode_into(format, data, &mut Bounded(0));
    }
    let path = String::from_utf8_lossy(data);
    if let Some(plinth_boot::metadata::MetadataPath::Ec2(key)) = plinth_boot::metadata::MetadataPath::of(&path) {
        let tree = serde_json::json!({"instance-id": "i", "public-keys": {"0": {"openssh-key": "k"}}});
        let _ = plinth_boot::metadata::ec2_answer(&tree, &key);
    }
});
