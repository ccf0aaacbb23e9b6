//! ISO 9660 (ECMA-119) reading over any `Read + Seek`, with the two naming
//! extensions OS media use: Rock Ridge (POSIX names through SUSP `NM`
//! entries, preferred) and Joliet (UCS-2 names in a supplementary volume
//! descriptor). Plain ISO 9660 names (`VMLINUZ.;1`) are lower-cased and lose
//! their version. Multi-extent files (over 4 GiB) are joined, Rock Ridge
//! relocated directories are followed, symbolic links are skipped (and
//! counted), and every name is checked to be a single path component.
//!
//! Nothing here trusts the image: sizes, depths, entry counts and
//! continuation chains are bounded, and a directory that loops back is an
//! error, not a hang.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};

/// Logical sector size.
pub const SECTOR: u64 = 2048;
/// Deepest directory nesting read.
pub const MAX_DEPTH: usize = 64;
/// Largest directory read (bytes).
pub const MAX_DIR_BYTES: u64 = 64 * 1024 * 1024;
/// Most entries in one image.
pub const MAX_ENTRIES: usize = 2_000_000;

/// Why an image cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IsoError {
    #[error("not an ISO 9660 image (no CD001 volume descriptor at sector 16)")]
    NotIso,
    #[error("corrupt ISO 9660 image: {0}")]
    Corrupt(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

fn corrupt(m: impl Into<String>) -> IsoError {
    IsoError::Corrupt(m.into())
}

/// Which names the image's tree is read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// Rock Ridge `NM` entries (bytes to skip at the start of each system use area).
    RockRidge { skip: u8 },
    /// Joliet UCS-2 names.
    Joliet,
    /// ISO 9660 names, lower-cased, without `;1`.
    Plain,
}

/// A directory's place in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First logical block.
    pub lba: u32,
    /// Length in bytes.
    pub len: u32,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file: its extents, in order.
    File { name: String, extents: Vec<Extent> },
    /// A directory.
    Dir { name: String, extent: Extent },
    /// A symbolic link (Rock Ridge `SL`); never followed.
    Symlink { name: String },
}

impl Entry {
    /// The entry's name (one path component).
    pub fn name(&self) -> &str {
        match self {
            Entry::File { name, .. } | Entry::Dir { name, .. } | Entry::Symlink { name } => name,
        }
    }

    /// A file's size in bytes (0 for others).
    pub fn size(&self) -> u64 {
        match self {
            Entry::File { extents, .. } => extents.iter().map(|e| u64::from(e.len)).sum(),
            _ => 0,
        }
    }
}

/// An open image.
pub struct Iso<R> {
    r: R,
    image_len: u64,
    naming: Naming,
    root: Extent,
    /// Volume identifier of the primary descriptor.
    pub volume_id: String,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A raw directory record.
struct Record<'a> {
    extent: Extent,
    flags: u8,
    id: &'a [u8],
    system_use: &'a [u8],
}

fn parse_record(b: &[u8]) -> Result<Record<'_>, IsoError> {
    if b.len() < 34 {
        return Err(corrupt("directory record shorter than 34 bytes"));
    }
    let id_len = b[32] as usize;
    if 33 + id_len > b.len() {
        return Err(corrupt("directory record name runs past the record"));
    }
    let su_start = 33 + id_len + usize::from(id_len.is_multiple_of(2));
    Ok(Record {
        extent: Extent { lba: le32(b, 2), len: le32(b, 10) },
        flags: b[25],
        id: &b[33..33 + id_len],
        system_use: b.get(su_start..).unwrap_or_default(),
    })
}

/// The first directory record of a directory's data (its `.` entry).
fn first_record(dir: &[u8]) -> Option<&[u8]> {
    dir.get(..*dir.first()? as usize)
}

/// What the Rock Ridge entries of one record say.
#[derive(Default)]
struct RockRidge {
    name: Option<Vec<u8>>,
    symlink: bool,
    relocated: bool,
    child_link: Option<u32>,
}

impl<R: Read + Seek> Iso<R> {
    /// Opens an image: finds the primary volume descriptor, a Joliet
    /// supplementary one if any, and whether the tree carries Rock Ridge.
    pub fn open(mut r: R) -> Result<Iso<R>, IsoError> {
        let image_len = r.seek(SeekFrom::End(0))?;
        let mut pvd: Option<Vec<u8>> = None;
        let mut joliet: Option<Extent> = None;
        for sector in 16..16 + 64 {
            let mut d = vec![0u8; SECTOR as usize];
            r.seek(SeekFrom::Start(sector * SECTOR))?;
            if r.read_exact(&mut d).is_err() {
                break;
            }
            if &d[1..6] != b"CD001" {
                break;
            }
            match d[0] {
                1 if pvd.is_none() => pvd = Some(d),
                2 if matches!(&d[88..91], b"%/@" | b"%/C" | b"%/E") => {
                    joliet = Some(parse_record(&d[156..190])?.extent);
                }
                255 => break,
                _ => {}
            }
        }
        let pvd = pvd.ok_or(IsoError::NotIso)?;
        let volume_id = String::from_utf8_lossy(&pvd[40..72]).trim().to_owned();
        let root = parse_record(&pvd[156..190])?.extent;
        let mut iso = Iso { r, image_len, naming: Naming::Plain, root, volume_id };
        // Rock Ridge: the root's "." record starts its system use area with SP.
        let first = iso.read_extent(root, SECTOR)?;
        let dot = parse_record(first_record(&first).ok_or_else(|| corrupt("root directory is empty"))?)?;
        let su = dot.system_use;
        if su.len() >= 7 && &su[0..2] == b"SP" && su[4] == 0xBE && su[5] == 0xEF {
            iso.naming = Naming::RockRidge { skip: su[6] };
        } else if let Some(j) = joliet {
            iso.naming = Naming::Joliet;
            iso.root = j;
        }
        Ok(iso)
    }

    /// The naming the tree is read with.
    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// The root directory.
    pub fn root(&self) -> Extent {
        self.root
    }

    fn read_extent(&mut self, e: Extent, max: u64) -> Result<Vec<u8>, IsoError> {
        let start = u64::from(e.lba) * SECTOR;
        let len = u64::from(e.len).min(max);
        if start + len > self.image_len {
            return Err(corrupt(format!("extent at block {} runs past the end of the image", e.lba)));
        }
        let mut buf = vec![0u8; len as usize];
        self.r.seek(SeekFrom::Start(start))?;
        self.r.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn rock_ridge(&mut self, su: &[u8], skip: u8) -> Result<RockRidge, IsoError> {
        let mut out = RockRidge::default();
        let mut area = su.get(skip as usize..).unwrap_or_default().to_vec();
        let mut name = Vec::new();
        let mut named = false;
        for _hop in 0..16 {
            let mut next: Option<(u32, u32, u32)> = None;
            let mut i = 0;
            while i + 4 <= area.len() {
                let (sig, len) = (&area[i..i + 2], area[i + 2] as usize);
                if len < 4 || i + len > area.len() {
                    break;
                }
                let body = &area[i + 4..i + len];
                match sig {
                    // Flags: 1 continue, 2 current dir, 4 parent dir.
                    b"NM" if !body.is_empty() && body[0] & 0x06 == 0 => {
                        name.extend_from_slice(&body[1..]);
                        named = true;
                    }
                    b"SL" => out.symlink = true,
                    b"RE" => out.relocated = true,
                    b"CL" if body.len() >= 4 => out.child_link = Some(le32(body, 0)),
                    b"CE" if body.len() >= 20 => next = Some((le32(body, 0), le32(body, 8), le32(body, 16))),
                    b"ST" => break,
                    _ => {}
                }
                i += len;
            }
            let Some((block, offset, len)) = next else { break };
            if len > SECTOR as u32 * 4 {
                return Err(corrupt("Rock Ridge continuation area too large"));
            }
            let start = u64::from(block) * SECTOR + u64::from(offset);
            if start + u64::from(len) > self.image_len {
                return Err(corrupt("Rock Ridge continuation area runs past the end of the image"));
            }
            area = vec![0u8; len as usize];
            self.r.seek(SeekFrom::Start(start))?;
            self.r.read_exact(&mut area)?;
        }
        if named {
            out.name = Some(name);
        }
        Ok(out)
    }

    fn name_of(&self, id: &[u8], rr_name: Option<Vec<u8>>) -> Result<String, IsoError> {
        let name = match (self.naming, rr_name) {
            (Naming::RockRidge { .. }, Some(n)) => String::from_utf8_lossy(&n).into_owned(),
            (Naming::Joliet, _) => {
                let units: Vec<u16> = id.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
                let s = String::from_utf16_lossy(&units);
                s.split(';').next().unwrap_or_default().to_owned()
            }
            _ => {
                let s = String::from_utf8_lossy(id);
                let s = s.split(';').next().unwrap_or_default();
                s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase()
            }
        };
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
            return Err(corrupt(format!("unsafe file name {name:?} in the image")));
        }
        Ok(name)
    }

    /// The entries of directory `dir` (without `.` and `..`).
    pub fn read_dir(&mut self, dir: Extent) -> Result<Vec<Entry>, IsoError> {
        if u64::from(dir.len) > MAX_DIR_BYTES {
            return Err(corrupt(format!("directory at block {} is larger than {MAX_DIR_BYTES} bytes", dir.lba)));
        }
        let data = self.read_extent(dir, MAX_DIR_BYTES)?;
        let mut out: Vec<Entry> = Vec::new();
        let mut pos = 0usize;
        // A file whose earlier extents were flagged "not the last".
        let mut pending: Option<(String, Vec<Extent>)> = None;
        while pos < data.len() {
            let len = data[pos] as usize;
            if len == 0 {
                // Records never cross a sector: go on at the next one.
                pos = (pos / SECTOR as usize + 1) * SECTOR as usize;
                continue;
            }
            let rec_bytes =
                data.get(pos..pos + len).ok_or_else(|| corrupt("directory record runs past its directory"))?;
            pos += len;
            let rec = parse_record(rec_bytes)?;
            if rec.id == [0] || rec.id == [1] {
                continue;
            }
            let rr = match self.naming {
                Naming::RockRidge { skip } => self.rock_ridge(rec.system_use, skip)?,
                _ => RockRidge::default(),
            };
            if rr.relocated {
                continue; // Reached through its CL placeholder instead.
            }
            let name = self.name_of(rec.id, rr.name)?;
            let is_dir = rec.flags & 0x02 != 0;
            let more = rec.flags & 0x80 != 0;
            if let Some((pname, mut extents)) = pending.take() {
                if pname == name && !is_dir {
                    extents.push(rec.extent);
                    if more {
                        pending = Some((pname, extents));
                    } else {
                        out.push(Entry::File { name: pname, extents });
                    }
                    continue;
                }
                return Err(corrupt(format!("multi-extent file {pname:?} is cut short")));
            }
            let entry = if rr.symlink {
                Entry::Symlink { name }
            } else if let Some(lba) = rr.child_link {
                let first = self.read_extent(Extent { lba, len: SECTOR as u32 }, SECTOR)?;
                let dot = parse_record(first_record(&first).ok_or_else(|| corrupt("relocated directory is empty"))?)?;
                Entry::Dir { name, extent: Extent { lba, len: dot.extent.len } }
            } else if is_dir {
                Entry::Dir { name, extent: rec.extent }
            } else if more {
                pending = Some((name, vec![rec.extent]));
                continue;
            } else {
                Entry::File { name, extents: vec![rec.extent] }
            };
            out.push(entry);
        }
        if let Some((name, _)) = pending {
            return Err(corrupt(format!("multi-extent file {name:?} is cut short")));
        }
        Ok(out)
    }

    /// Every entry under the root, depth first, as (path components, entry).
    pub fn walk(&mut self) -> Result<Vec<(Vec<String>, Entry)>, IsoError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![(Vec::<String>::new(), self.root)];
        seen.insert(self.root.lba);
        while let Some((path, dir)) = stack.pop() {
            if path.len() > MAX_DEPTH {
                return Err(corrupt(format!("directories nested deeper than {MAX_DEPTH}")));
            }
            for entry in self.read_dir(dir)? {
                // Rock Ridge's holder of relocated deep directories: they are
                // reached through their CL links instead.
                let rr = matches!(self.naming, Naming::RockRidge { .. });
                if rr
                    && path.is_empty()
                    && matches!(&entry, Entry::Dir { name, .. } if name == "rr_moved" || name == ".rr_moved")
                {
                    continue;
                }
                let mut p = path.clone();
                p.push(entry.name().to_owned());
                if let Entry::Dir { extent, .. } = &entry {
                    if !seen.insert(extent.lba) {
                        return Err(corrupt(format!("directory {} loops back", p.join("/"))));
                    }
                    stack.push((p.clone(), *extent));
                }
                out.push((p, entry));
                if out.len() > MAX_ENTRIES {
                    return Err(corrupt(format!("more than {MAX_ENTRIES} entries")));
                }
            }
        }
        Ok(out)
    }

    /// Copies a file's bytes to `out`; returns how many.
    pub fn copy(&mut self, entry: &Entry, out: &mut impl Write) -> Result<u64, IsoError> {
        let Entry::File { extents, .. } = entry else { return Ok(0) };
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 20];
        for e in extents {
            let start = u64::from(e.lba) * SECTOR;
            if start + u64::from(e.len) > self.image_len {
                return Err(corrupt(format!("file {} runs past the end of the image", entry.name())));
            }
            self.r.seek(SeekFrom::Start(start))?;
            let mut left = u64::from(e.len);
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                self.r.read_exact(&mut buf[..n])?;
                out.write_all(&buf[..n])?;
                left -= n as u64;
                total += n as u64;
            }
        }
        Ok(total)
    }
}

mod extract;
pub use extract::{ImportError, MANIFEST, Summary, check_claims, import, sha256_file};
