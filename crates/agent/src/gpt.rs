//! The image's GUID partition table, read from its first MiB (512-byte
//! sectors): where its EFI system partition and root file system are. And
//! a UEFI boot entry for its loader, written through efivarfs.

use std::path::Path;

/// A partition of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    /// 1-based, as the kernel numbers it.
    pub number: u32,
    pub type_guid: [u8; 16],
    pub unique_guid: [u8; 16],
    pub first_lba: u64,
    pub last_lba: u64,
}

/// A GPT's partitions.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub partitions: Vec<Partition>,
}

/// A GUID as the table stores it (the first three fields little-endian).
pub fn guid(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

pub const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
pub const ROOT_ARM64: &str = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";
pub const LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

impl Table {
    /// The table in `head` (the image's first bytes), if it has a valid one.
    pub fn parse(head: &[u8]) -> Option<Table> {
        let h = head.get(512..512 + 92)?;
        if &h[..8] != b"EFI PART" {
            return None;
        }
        let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let entries_lba = u64_at(h, 72);
        let count = u32_at(h, 80).min(1024) as usize;
        let size = u32_at(h, 84) as usize;
        if !(128..=4096).contains(&size) {
            return None;
        }
        let mut partitions = Vec::new();
        for i in 0..count {
            let at = usize::try_from(entries_lba).ok()?.checked_mul(512)?.checked_add(i * size)?;
            let Some(e) = at.checked_add(128).and_then(|end| head.get(at..end)) else { break };
            let type_guid: [u8; 16] = e[..16].try_into().ok()?;
            if type_guid == [0; 16] {
                continue;
            }
            partitions.push(Partition {
                number: i as u32 + 1,
                type_guid,
                unique_guid: e[16..32].try_into().ok()?,
                first_lba: u64_at(e, 32),
                last_lba: u64_at(e, 40),
            });
        }
        Some(Table { partitions })
    }

    /// The EFI system partition.
    pub fn esp(&self) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.type_guid == guid(ESP))
    }

    /// The root file system: a partition typed as a root, else the largest
    /// Linux file system partition.
    pub fn root(&self) -> Option<&Partition> {
        let roots = [guid(ROOT_X86_64), guid(ROOT_ARM64)];
        self.partitions.iter().find(|p| roots.contains(&p.type_guid)).or_else(|| {
            self.partitions
                .iter()
                .filter(|p| p.type_guid == guid(LINUX_DATA))
                .max_by_key(|p| p.last_lba.saturating_sub(p.first_lba))
        })
    }
}

/// The EFI global variable GUID, as efivarfs names files.
const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// Non-volatile, boot service and runtime access.
const ATTRS: u32 = 0x7;

fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16().chain(std::iter::once(0)).flat_map(u16::to_le_bytes).collect()
}

/// An EFI_LOAD_OPTION naming `loader` on partition `esp` of the disk.
pub fn load_option(label: &str, esp: &Partition, loader: &str) -> Vec<u8> {
    let mut path = Vec::new();
    // Hard drive media device path: partition number, start, size, GUID signature.
    path.extend_from_slice(&[0x04, 0x01, 42, 0]);
    path.extend_from_slice(&esp.number.to_le_bytes());
    path.extend_from_slice(&esp.first_lba.to_le_bytes());
    path.extend_from_slice(&esp.last_lba.saturating_sub(esp.first_lba).saturating_add(1).to_le_bytes());
    path.extend_from_slice(&esp.unique_guid);
    path.extend_from_slice(&[0x02, 0x02]);
    // File path media device path.
    let file = ucs2(loader);
    path.extend_from_slice(&[0x04, 0x04]);
    path.extend_from_slice(&((4 + file.len()) as u16).to_le_bytes());
    path.extend_from_slice(&file);
    path.extend_from_slice(&[0x7f, 0xff, 4, 0]);
    let mut out = Vec::new();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(path.len() as u16).to_le_bytes());
    out.extend_from_slice(&ucs2(label));
    out.extend_from_slice(&path);
    out
}

/// Writes one EFI variable through efivarfs (attributes and data in one
/// write, as efivarfs wants), clearing the immutable flag an existing one has.
fn write_var(efivars: &Path, name: &str, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let path = efivars.join(format!("{name}-{GLOBAL}"));
    if path.exists() {
        let _ = std::process::Command::new("chattr").arg("-i").arg(&path).status();
    }
    let mut body = ATTRS.to_le_bytes().to_vec();
    body.extend_from_slice(data);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(&body).map_err(|e| format!("{}: {e}", path.display()))
}

/// Adds (or replaces) the boot entry called `label` for `loader` on `esp`,
/// placed after the entries already in BootOrder, so a machine that boots
/// from the network first still does.
pub fn add_boot_entry(efivars: &Path, label: &str, esp: &Partition, loader: &str) -> Result<String, String> {
    let read =
        |name: &str| std::fs::read(efivars.join(format!("{name}-{GLOBAL}"))).ok().map(|b| b[4.min(b.len())..].to_vec());
    let order: Vec<u16> =
        read("BootOrder").unwrap_or_default().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let option = load_option(label, esp, loader);
    // The entry this label had, else the first free number.
    let mut number = None;
    for n in 0u16..0x100 {
        match read(&format!("Boot{n:04X}")) {
            Some(existing) if existing.len() > 6 && existing[6..].starts_with(&ucs2(label)) => {
                number = Some(n);
                break;
            }
            None if number.is_none() => number = Some(n),
            _ => {}
        }
    }
    let n = number.ok_or("no free Boot#### number")?;
    write_var(efivars, &format!("Boot{n:04X}"), &option)?;
    if !order.contains(&n) {
        let mut new: Vec<u8> = order.iter().flat_map(|o| o.to_le_bytes()).collect();
        new.extend_from_slice(&n.to_le_bytes());
        write_var(efivars, "BootOrder", &new)?;
    }
    Ok(format!("UEFI boot entry Boot{n:04X} \"{label}\" for {loader}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table as sfdisk writes one: header at LBA 1, entries at LBA 2.
    fn head_with(parts: &[(&str, u64, u64)]) -> Vec<u8> {
        let mut head = vec![0u8; 1 << 20];
        head[512..520].copy_from_slice(b"EFI PART");
        head[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        head[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        head[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        for (i, (t, first, last)) in parts.iter().enumerate() {
            let at = 1024 + i * 128;
            head[at..at + 16].copy_from_slice(&guid(t));
            head[at + 16..at + 32].copy_from_slice(&[i as u8 + 1; 16]);
            head[at + 32..at + 40].copy_from_slice(&first.to_le_bytes());
            head[at + 40..at + 48].copy_from_slice(&last.to_le_bytes());
        }
        head
    }

    #[test]
    fn the_table_names_the_esp_and_the_root() {
        let t = Table::parse(&head_with(&[(ESP, 2048, 206847), (ROOT_X86_64, 206848, 3000000)])).unwrap();
        assert_eq!(t.esp().unwrap().number, 1);
        assert_eq!(t.root().unwrap().number, 2);
        let data = Table::parse(&head_with(&[(LINUX_DATA, 2048, 4096), (LINUX_DATA, 8192, 900000)])).unwrap();
        assert_eq!(data.root().unwrap().number, 2, "the largest Linux partition");
        assert_eq!(Table::parse(&[0u8; 2048]), None);
        assert_eq!(Table::parse(b"short"), None);
    }

    #[test]
    fn a_guid_is_stored_mixed_endian() {
        assert_eq!(guid(ESP)[..4], [0x28, 0x73, 0x2a, 0xc1]);
        assert_eq!(guid(ESP)[8..], [0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b]);
    }

    #[test]
    fn a_boot_entry_goes_after_the_existing_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut order = 0x7u32.to_le_bytes().to_vec();
        order.extend_from_slice(&[0, 0]);
        std::fs::write(dir.path().join(format!("BootOrder-{GLOBAL}")), &order).unwrap();
        std::fs::write(dir.path().join(format!("Boot0000-{GLOBAL}")), [7, 0, 0, 0, 1, 0, 4, 0]).unwrap();
        let t = Table::parse(&head_with(&[(ESP, 2048, 206847)])).unwrap();
        let said = add_boot_entry(dir.path(), "plinth image", t.esp().unwrap(), "\\EFI\\BOOT\\BOOTX64.EFI").unwrap();
        assert!(said.contains("Boot0001"), "{said}");
        let entry = std::fs::read(dir.path().join(format!("Boot0001-{GLOBAL}"))).unwrap();
        assert_eq!(&entry[..8], &[7, 0, 0, 0, 1, 0, 0, 0], "the variable's attributes, then an active option");
        assert!(entry.windows(ucs2("\\EFI\\BOOT\\BOOTX64.EFI").len()).any(|w| w == ucs2("\\EFI\\BOOT\\BOOTX64.EFI")));
        let order = std::fs::read(dir.path().join(format!("BootOrder-{GLOBAL}"))).unwrap();
        assert_eq!(&order[4..], &[0, 0, 1, 0]);
        // Again: the same entry is replaced, the order is not lengthened.
        add_boot_entry(dir.path(), "plinth image", t.esp().unwrap(), "\\EFI\\BOOT\\BOOTX64.EFI").unwrap();
        assert_eq!(std::fs::read(dir.path().join(format!("BootOrder-{GLOBAL}"))).unwrap()[4..], [0, 0, 1, 0]);
    }
}
