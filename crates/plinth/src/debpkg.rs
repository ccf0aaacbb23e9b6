//! Reads Debian packages (`.deb`) without dpkg: an `ar` archive whose
//! `data.tar` (xz, zstd or uncompressed) is parsed as it is decompressed,
//! writing only the entries asked for, and only inside the folder given.
//! `plinth discovery build --kernel-package` uses it to take a kernel and its
//! modules from `linux-image-*.deb` (and, for Ubuntu, `linux-modules-*.deb`).

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// The members of an `ar` archive, as (name, bytes).
pub fn ar_members(bytes: &[u8]) -> Result<Vec<(String, &[u8])>> {
    let Some(mut rest) = bytes.strip_prefix(b"!<arch>\n") else {
        bail!("not a Debian package (no ar archive header)");
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 60 {
            bail!("truncated ar member header");
        }
        let (header, body) = rest.split_at(60);
        if &header[58..60] != b"`\n" {
            bail!("bad ar member header");
        }
        let name = String::from_utf8_lossy(&header[..16]).trim_end().trim_end_matches('/').to_owned();
        let size: usize = std::str::from_utf8(&header[48..58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .context("bad ar member size")?;
        if size > body.len() {
            bail!("ar member `{name}` is truncated ({size} bytes announced, {} there)", body.len());
        }
        out.push((name, &body[..size]));
        // Members are padded to an even length.
        rest = &body[(size + size % 2).min(body.len())..];
    }
    Ok(out)
}

/// The largest file a kernel package may give: a kernel image or a module
/// larger than this is no kernel's (a decompression bomb, say).
pub const MAX_FILE: u64 = 256 << 20;
/// The most a kernel package may write in all.
pub const MAX_TOTAL: u64 = 2 << 30;

/// Decompresses one xz or zstd stream (by its magic) completely, but never
/// past [`MAX_FILE`], or returns `bytes` unchanged when it is neither.
pub fn decompress(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    let mut out = Capped(Vec::new());
    let refused =
        || anyhow::anyhow!("it decompresses to more than {} MiB, more than a module can be; refused", MAX_FILE >> 20);
    if bytes.starts_with(XZ_MAGIC) {
        lzma_rs::xz_decompress(&mut &bytes[..], &mut out).map_err(|e| match e {
            lzma_rs::error::Error::IoError(e) if e.kind() == std::io::ErrorKind::FileTooLarge => refused(),
            e => anyhow::anyhow!("xz: {e}"),
        })?;
    } else if bytes.starts_with(ZSTD_MAGIC) {
        let r = zstd_frames(bytes, &mut out);
        r.map_err(|e| if out.0.len() as u64 + (1 << 20) >= MAX_FILE { refused() } else { e.context("zstd") })?;
    } else {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    Ok(std::borrow::Cow::Owned(out.0))
}

/// A buffer that refuses to grow past [`MAX_FILE`].
struct Capped(Vec<u8>);

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() as u64 + buf.len() as u64 > MAX_FILE {
            return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, "decompressed output too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decodes every zstd frame of `src` into `out`, as it goes.
fn zstd_frames(mut src: &[u8], out: &mut dyn Write) -> Result<()> {
    while !src.is_empty() {
        let mut frame = ruzstd::decoding::StreamingDecoder::new(&mut src).map_err(|e| anyhow::anyhow!("{e}"))?;
        std::io::copy(&mut frame, out)?;
    }
    Ok(())
}

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\0";
const ZSTD_MAGIC: &[u8] = b"\x28\xb5\x2f\xfd";

/// Writes the entries of the package's `data.tar` for which `want` is true
/// under `into` (as their paths in the package, without the leading `./`),
/// streaming: the archive is never held uncompressed in memory. Returns the
/// paths written.
pub fn extract(deb: &[u8], into: &Path, want: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
    let members = ar_members(deb)?;
    let Some((name, data)) = members.iter().find(|(n, _)| n.starts_with("data.tar")) else {
        bail!("the package has no data.tar member");
    };
    let mut sink = TarSink::new(into, want);
    match name.as_str() {
        "data.tar" => sink.write_all(data)?,
        "data.tar.xz" => lzma_rs::xz_decompress(&mut &data[..], &mut sink).map_err(|e| match e {
            lzma_rs::error::Error::IoError(e) => anyhow::Error::from(e),
            e => anyhow::anyhow!("data.tar.xz: {e}"),
        })?,
        "data.tar.zst" => zstd_frames(data, &mut sink).context("data.tar.zst")?,
        other => bail!("{other} is not supported (xz, zstd or uncompressed only)"),
    }
    sink.finish()
}

/// A tar parser fed by `write`: ustar (with its name prefix), GNU long names
/// and pax `path` records; regular files only.
struct TarSink<'a> {
    into: &'a Path,
    want: &'a dyn Fn(&str) -> bool,
    header: Vec<u8>,
    /// Bytes of the current entry still to come, and how many of them are
    /// padding.
    remaining: u64,
    padding: u64,
    target: Entry,
    /// A name for the next entry, from a GNU `L` or pax `x` entry.
    next_name: Option<String>,
    written: Vec<String>,
    ended: bool,
    /// Bytes written so far, in all.
    total: u64,
}

enum Entry {
    Skip,
    File(std::io::BufWriter<std::fs::File>),
    /// The data of a GNU long name or pax header, collected.
    Meta(u8, Vec<u8>),
}

impl<'a> TarSink<'a> {
    fn new(into: &'a Path, want: &'a dyn Fn(&str) -> bool) -> TarSink<'a> {
        TarSink {
            into,
            want,
            header: Vec::with_capacity(512),
            remaining: 0,
            padding: 0,
            target: Entry::Skip,
            next_name: None,
            written: Vec::new(),
            ended: false,
            total: 0,
        }
    }

    fn finish(mut self) -> Result<Vec<String>> {
        if !self.ended {
            bail!("the package's data.tar is truncated");
        }
        self.end_entry()?;
        Ok(self.written)
    }

    fn end_entry(&mut self) -> std::io::Result<()> {
        match std::mem::replace(&mut self.target, Entry::Skip) {
            Entry::File(mut f) => f.flush()?,
            Entry::Meta(kind, data) => self.next_name = meta_name(kind, &data),
            Entry::Skip => {}
        }
        Ok(())
    }

    fn start_entry(&mut self) -> std::io::Result<()> {
        let h = std::mem::take(&mut self.header);
        if h.iter().all(|b| *b == 0) {
            self.ended = true;
            return Ok(());
        }
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("tar: {what}"));
        let sum: u64 = h.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { *b as u64 }).sum();
        if octal(&h[148..156]) != Some(sum) {
            return Err(bad("header checksum mismatch"));
        }
        let size = size_field(&h[124..136]).ok_or_else(|| bad("bad size field"))?;
        let kind = h[156];
        let mut name = cstr(&h[..100]);
        if &h[257..262] == b"ustar" {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() && &h[257..263] == b"ustar\0" {
                name = format!("{prefix}/{name}");
            }
        }
        if let Some(long) = self.next_name.take() {
            name = long;
        }
        self.remaining = size + (512 - size % 512) % 512;
        self.padding = self.remaining - size;
        self.target = match kind {
            b'L' | b'x' if size <= 1 << 20 => Entry::Meta(kind, Vec::with_capacity(size as usize)),
            b'0' | 0 | b'7' => match clean(&name) {
                Some(rel) if (self.want)(&rel) && size > MAX_FILE => {
                    return Err(bad(&format!(
                        "`{rel}` is {} MiB, more than a kernel or module can be ({} MiB); refused",
                        size >> 20,
                        MAX_FILE >> 20
                    )));
                }
                Some(rel) if (self.want)(&rel) && self.total + size > MAX_TOTAL => {
                    return Err(bad(&format!("the package would write more than {} GiB; refused", MAX_TOTAL >> 30)));
                }
                Some(rel) if (self.want)(&rel) => {
                    self.total += size;
                    let path = self.into.join(&rel);
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    self.written.push(rel);
                    Entry::File(std::io::BufWriter::new(std::fs::File::create(path)?))
                }
                _ => Entry::Skip,
            },
            _ => Entry::Skip,
        };
        Ok(())
    }
}

impl Write for TarSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() && !self.ended {
            if self.remaining == 0 {
                let take = (512 - self.header.len()).min(rest.len());
                self.header.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if self.header.len() == 512 {
                    self.start_entry()?;
                    if self.remaining == 0 {
                        self.end_entry()?;
                    }
                }
                continue;
            }
            let take = (self.remaining as usize).min(rest.len());
            let data_left = self.remaining.saturating_sub(self.padding) as usize;
            let data = &rest[..take.min(data_left)];
            match &mut self.target {
                Entry::File(f) => f.write_all(data)?,
                Entry::Meta(_, v) => v.extend_from_slice(data),
                Entry::Skip => {}
            }
            self.remaining -= take as u64;
            rest = &rest[take..];
            if self.remaining == 0 {
                self.end_entry()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn octal(field: &[u8]) -> Option<u64> {
    let s = cstr(field);
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() { Some(0) } else { u64::from_str_radix(s, 8).ok() }
}

/// A size: octal, or GNU base-256 (high bit set) for large files.
fn size_field(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        field[1..].iter().try_fold(0u64, |acc, b| acc.checked_mul(256).map(|a| a + *b as u64))
    } else {
        octal(field)
    }
}

/// The name a GNU long-name (`L`) or pax (`x`) entry gives the next entry.
fn meta_name(kind: u8, data: &[u8]) -> Option<String> {
    if kind == b'L' {
        return Some(cstr(data));
    }
    // pax: "<len> <key>=<value>\n" records.
    let text = String::from_utf8_lossy(data);
    text.lines().find_map(|l| l.split_once(' ').and_then(|(_, kv)| kv.strip_prefix("path=")).map(str::to_owned))
}

/// A package path made relative and checked: `./boot/x` is `boot/x`; any
/// `..`, or nothing left, is refused.
fn clean(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    if parts.is_empty() { None } else { Some(parts.join("/")) }
}

/// A kernel taken from packages: its image and its modules folder.
pub struct Kernel {
    pub image: PathBuf,
    pub modules: PathBuf,
    pub version: String,
}

/// Unpacks the kernel image and modules of `debs` (a `linux-image` package,
/// plus `linux-modules` where the distribution splits them) under `into`.
pub fn unpack_kernel(debs: &[PathBuf], into: &Path) -> Result<Kernel> {
    let want = |p: &str| {
        let base = p.strip_prefix("usr/").unwrap_or(p);
        (base.starts_with("boot/vmlinuz-") || base.starts_with("boot/vmlinux-"))
            || (base.starts_with("lib/modules/")
                && (p.ends_with(".ko") || p.ends_with(".ko.xz") || p.ends_with(".ko.zst")))
    };
    let mut written = Vec::new();
    for deb in debs {
        let bytes = std::fs::read(deb).with_context(|| format!("cannot read {}", deb.display()))?;
        written.extend(extract(&bytes, into, &want).with_context(|| format!("{}", deb.display()))?);
    }
    let images: Vec<&String> =
        written.iter().filter(|p| p.strip_prefix("usr/").unwrap_or(p).starts_with("boot/vml")).collect();
    let image = match images.as_slice() {
        [one] => one.to_string(),
        [] => bail!("no kernel image (boot/vmlinuz-*) in {}", list(debs)),
        many => bail!("more than one kernel image: {}", many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
    };
    let file = image.rsplit('/').next().unwrap_or_default();
    let version = file.split_once('-').map(|(_, v)| v.to_owned()).unwrap_or_default();
    let modules = ["lib/modules", "usr/lib/modules"].iter().map(|d| into.join(d).join(&version)).find(|d| d.is_dir());
    let Some(modules) = modules else {
        bail!(
            "no modules for kernel {version} in {}: on Ubuntu they are in linux-modules-{version}_*.deb, give it too",
            list(debs)
        );
    };
    Ok(Kernel { image: into.join(image), modules, version })
}

fn list(debs: &[PathBuf]) -> String {
    debs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_entry(out: &mut Vec<u8>, name: &str, kind: u8, data: &[u8]) {
        let mut h = [0u8; 512];
        h[..name.len().min(100)].copy_from_slice(&name.as_bytes()[..name.len().min(100)]);
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar ");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| *b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn deb(data_name: &str, data: &[u8]) -> Vec<u8> {
        let mut out = b"!<arch>\n".to_vec();
        for (name, body) in [("debian-binary", &b"2.0\n"[..]), ("control.tar.xz", b"x"), (data_name, data)] {
            out.extend_from_slice(
                format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, 100644, body.len()).as_bytes(),
            );
            out.extend_from_slice(body);
            if body.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    fn kernel_tar() -> Vec<u8> {
        let mut t = Vec::new();
        let long = format!("./lib/modules/6.1.0-9-amd64/kernel/drivers/{}/e1000.ko", "x".repeat(100));
        tar_entry(&mut t, "./", b'5', b"");
        tar_entry(&mut t, "./boot/vmlinuz-6.1.0-9-amd64", b'0', b"KERNEL");
        tar_entry(&mut t, "./boot/config-6.1.0-9-amd64", b'0', b"CONFIG");
        tar_entry(&mut t, "././@LongLink", b'L', format!("{long}\0").as_bytes());
        tar_entry(&mut t, "./lib/modules/6.1.0-9-amd64/kernel/drivers/xxxx", b'0', b"\0depends=\0");
        tar_entry(&mut t, "./lib/modules/6.1.0-9-amd64/kernel/virtio_net.ko.xz", b'0', b"XZ");
        tar_entry(&mut t, "../../etc/evil.ko", b'0', b"nope");
        tar_entry(&mut t, "./lib/modules/6.1.0-9-amd64/link.ko", b'2', b"");
        t.extend_from_slice(&[0u8; 1024]);
        t
    }

    #[test]
    fn a_kernel_package_unpacks_from_xz_zstd_or_plain_data_tar() {
        let tar = kernel_tar();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &tar[..], &mut xz).unwrap();
        let zst = ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
        for (name, data) in [("data.tar.xz", xz), ("data.tar.zst", zst), ("data.tar", tar.clone())] {
            let dir = tempfile::tempdir().unwrap();
            let pkg = dir.path().join("linux-image.deb");
            std::fs::write(&pkg, deb(name, &data)).unwrap();
            let out = dir.path().join("out");
            let k = unpack_kernel(&[pkg], &out).unwrap();
            assert_eq!(k.version, "6.1.0-9-amd64", "{name}");
            assert_eq!(std::fs::read(&k.image).unwrap(), b"KERNEL");
            assert_eq!(k.modules, out.join("lib/modules/6.1.0-9-amd64"));
            let long = k.modules.join(format!("kernel/drivers/{}/e1000.ko", "x".repeat(100)));
            assert_eq!(std::fs::read(long).unwrap(), b"\0depends=\0", "GNU long names: {name}");
            assert!(k.modules.join("kernel/virtio_net.ko.xz").is_file());
            assert!(!out.join("boot/config-6.1.0-9-amd64").exists(), "only what is asked for");
            assert!(!dir.path().join("etc/evil.ko").exists() && !out.join("etc").exists(), "no path escapes");
        }
    }

    #[test]
    fn bad_packages_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let check = |bytes: Vec<u8>, want: &str| {
            let pkg = dir.path().join("p.deb");
            std::fs::write(&pkg, bytes).unwrap();
            let e = unpack_kernel(std::slice::from_ref(&pkg), &dir.path().join("o")).err().unwrap();
            assert!(format!("{e:#}").contains(want), "{e:#} lacks {want}");
        };
        check(b"PK\x03\x04".to_vec(), "not a Debian package");
        check(b"!<arch>\ndebian-binary   0           0     0     100644  999       `\n2.0\n".to_vec(), "truncated");
        check(deb("data.tar.bz2", b"x"), "not supported");
        check(deb("data.tar.xz", b"\xfd7zXZ\0garbage"), "xz");
        let mut t = kernel_tar();
        t.truncate(1000);
        check(deb("data.tar", &t), "truncated");
        let mut t = Vec::new();
        tar_entry(&mut t, "./boot/vmlinuz-6.1.0-9-amd64", b'0', b"K");
        t.extend_from_slice(&[0u8; 1024]);
        check(deb("data.tar", &t), "linux-modules-6.1.0-9-amd64");
        let mut bad = kernel_tar();
        bad[148] = b'7';
        check(deb("data.tar", &bad), "checksum");
        // Prefixes and corrupted copies of packages fail cleanly, never panic.
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &kernel_tar()[..], &mut xz).unwrap();
        let zst = ruzstd::encoding::compress_to_vec(&kernel_tar()[..], ruzstd::encoding::CompressionLevel::Fastest);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for whole in [deb("data.tar", &kernel_tar()), deb("data.tar.xz", &xz), deb("data.tar.zst", &zst)] {
            let pkg = dir.path().join("cut.deb");
            for cut in (0..whole.len()).step_by(97) {
                std::fs::write(&pkg, &whole[..cut]).unwrap();
                let _ = unpack_kernel(std::slice::from_ref(&pkg), &dir.path().join("cut"));
            }
            for _ in 0..200 {
                let mut bad = whole.clone();
                for _ in 0..4 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let at = (seed % bad.len() as u64) as usize;
                    bad[at] ^= (seed >> 32) as u8 | 1;
                }
                std::fs::write(&pkg, &bad).unwrap();
                let _ = unpack_kernel(std::slice::from_ref(&pkg), &dir.path().join("flip"));
                assert!(!dir.path().join("etc").exists(), "nothing lands outside the folder");
            }
        }
    }

    /// The probe's bomb: a small package whose kernel claims a gigabyte.
    /// Refused from its header, before anything is written.
    #[test]
    fn oversized_kernels_and_modules_are_refused() {
        let mut t = Vec::new();
        let mut h = Vec::new();
        tar_entry(&mut h, "./boot/vmlinuz-6.1.0-9-amd64", b'0', b"");
        // Claim 1 GiB in the size field (and fix the checksum).
        h[124..136].copy_from_slice(format!("{:011o}\0", 1u64 << 30).as_bytes());
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h[..512].iter().map(|b| *b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        t.extend_from_slice(&h[..512]);
        t.extend_from_slice(&[0u8; 4096]);
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("linux-image.deb");
        std::fs::write(&pkg, deb("data.tar", &t)).unwrap();
        let out = dir.path().join("out");
        let e = unpack_kernel(&[pkg], &out).err().expect("refused");
        assert!(format!("{e:#}").contains("more than a kernel or module can be"), "{e:#}");
        assert!(!out.join("boot/vmlinuz-6.1.0-9-amd64").exists(), "nothing written");
        // A module that decompresses past the bound stops there.
        let zeros = vec![0u8; (MAX_FILE + (1 << 20)) as usize];
        let bomb = ruzstd::encoding::compress_to_vec(&zeros[..], ruzstd::encoding::CompressionLevel::Fastest);
        drop(zeros);
        assert!(bomb.len() < 64 << 20, "{}", bomb.len());
        let e = decompress(&bomb).expect_err("refused");
        assert!(format!("{e:#}").contains("more than a module can be"), "{e:#}");
    }

    #[test]
    fn compressed_modules_decompress() {
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &b"module"[..], &mut xz).unwrap();
        assert_eq!(&*decompress(&xz).unwrap(), b"module");
        let zst = ruzstd::encoding::compress_to_vec(&b"module"[..], ruzstd::encoding::CompressionLevel::Fastest);
        assert_eq!(&*decompress(&zst).unwrap(), b"module");
        assert_eq!(&*decompress(b"plain").unwrap(), b"plain");
        assert!(decompress(b"\xfd7zXZ\0junk").is_err());
    }
}
