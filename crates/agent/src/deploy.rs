//! `plinth-agent deploy-image`: streams a disk image from a URL onto a
//! disk, decoding it on the way (raw, gzip, xz, zstd), hashing what arrives
//! (SHA-256 of the file as served) and resuming a dropped transfer with an
//! HTTP `Range` request.
//!
//! The disk is never half-good. Before anything else its first and last
//! MiB are zeroed (the old partition tables and boot loader go); the
//! image's first MiB (its partition table) is held back and written only
//! once the whole image is on the disk and its checksum matched. A
//! failure zeroes those regions again, so the disk stays unbootable.
//!
//! Then, when asked, it leaves the NoCloud seed on the image's root file
//! system (`/etc/cloud/cloud.cfg.d/90-plinth-seed.cfg`, as MAAS's curtin
//! does), and on UEFI machines adds a boot entry for the image's loader.

use sha2::Digest;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The image's first bytes, held back until the image is verified.
const HEAD: u64 = 1 << 20;

/// What to deploy, and where.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub url: String,
    pub sha256: String,
    pub format: String,
    /// Bytes of the file as served, when known.
    pub size: Option<u64>,
    /// Bytes once decoded, when known.
    pub raw_size: Option<u64>,
    pub disk: DiskRule,
    /// Where the block devices are listed (`/sys`).
    pub sysfs: PathBuf,
    /// Where their nodes are (`/dev`).
    pub dev: PathBuf,
    /// The NoCloud seed URL to leave on the image's root file system.
    pub seed_url: Option<String>,
    /// The loader a UEFI boot entry names (`\EFI\BOOT\BOOTX64.EFI`).
    pub efi_loader: Option<String>,
    /// What the boot entry is called.
    pub efi_label: String,
    /// Where the EFI variables are (`/sys/firmware/efi/efivars`).
    pub efivars: PathBuf,
    /// Transfer attempts in all (the first and its resumptions).
    pub attempts: u32,
    /// Seconds between progress reports.
    pub progress_every: Duration,
}

/// How the target disk is chosen among the machine's disks.
#[derive(Debug, Clone, Default)]
pub struct DiskRule {
    /// A device path (`/dev/vda`, `/dev/disk/by-path/...`, `/dev/disk/by-id/...`),
    /// or a regular file, written as it is.
    pub path: Option<String>,
    /// The disk's serial number.
    pub serial: Option<String>,
    /// The smallest a candidate may be, in bytes.
    pub min_size: Option<u64>,
    /// The largest a candidate may be, in bytes.
    pub max_size: Option<u64>,
    /// Which candidate wins when several are left: `smallest`, `largest` or `first`.
    pub pick: Option<String>,
}

/// A disk the machine has.
#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    pub name: String,
    pub node: PathBuf,
    pub size: u64,
    pub serial: Option<String>,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The disks under `sysfs`/block a deploy may write: not loop, RAM, optical,
/// device-mapper or RAID devices, not read-only, not removable, not empty.
pub fn disks(sysfs: &Path, dev: &Path) -> Vec<Disk> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(sysfs.join("block")) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd"].iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dir = e.path();
        let flag = |f: &str| read_trim(&dir.join(f)).as_deref() == Some("1");
        if flag("ro") || flag("removable") {
            continue;
        }
        let size = read_trim(&dir.join("size")).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0).saturating_mul(512);
        if size == 0 {
            continue;
        }
        let serial = read_trim(&dir.join("serial")).or_else(|| read_trim(&dir.join("device/serial")));
        out.push(Disk { node: dev.join(&name), name, size, serial });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The target: a regular file given as the path, or the one disk the rule
/// leaves. Several disks and no rule to pick one is a refusal.
pub fn choose(rule: &DiskRule, sysfs: &Path, dev: &Path) -> Result<Disk, String> {
    if let Some(path) = &rule.path {
        let p = Path::new(path);
        let meta = std::fs::metadata(p).map_err(|e| format!("disk {path}: {e}"))?;
        if meta.is_file() {
            return Ok(Disk { name: path.clone(), node: p.to_path_buf(), size: meta.len(), serial: None });
        }
        // A by-path or by-id link names a device node; its name is the sysfs entry.
        let real = std::fs::canonicalize(p).map_err(|e| format!("disk {path}: {e}"))?;
        let name = real.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return disks(sysfs, dev).into_iter().find(|d| d.name == name).ok_or_else(|| {
            format!("disk {path} ({}) is not a whole, writable, fixed disk of this machine", real.display())
        });
    }
    let all = disks(sysfs, dev);
    if all.is_empty() {
        return Err("this machine has no fixed, writable disk".into());
    }
    let list = |ds: &[Disk]| {
        ds.iter()
            .map(|d| {
                format!(
                    "{} ({}{})",
                    d.name,
                    mib(d.size),
                    d.serial.as_ref().map(|s| format!(", serial {s}")).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut left: Vec<Disk> = all
        .iter()
        .filter(|d| rule.serial.as_ref().is_none_or(|s| d.serial.as_ref() == Some(s)))
        .filter(|d| rule.min_size.is_none_or(|m| d.size >= m))
        .filter(|d| rule.max_size.is_none_or(|m| d.size <= m))
        .cloned()
        .collect();
    if left.is_empty() {
        return Err(format!("no disk matches the rule ({rule:?}); the machine's disks: {}", list(&all)));
    }
    if left.len() > 1 {
        match rule.pick.as_deref() {
            Some("smallest") => left.sort_by_key(|d| (d.size, d.name.clone())),
            Some("largest") => left.sort_by_key(|d| (std::cmp::Reverse(d.size), d.name.clone())),
            Some("first") => {}
            Some(other) => return Err(format!("disk rule `{other}`: expected smallest, largest or first")),
            None => {
                return Err(format!(
                    "{} disks could take the image: {}; say which with param image-disk (a /dev/disk/by-path or by-id \
                     path), image-disk-serial, image-disk-min-size/-max-size, or image-disk-pick (smallest, largest, first)",
                    left.len(),
                    list(&left)
                ));
            }
        }
    }
    Ok(left.remove(0))
}

/// The disk as the writer sees it: the image's first MiB kept in memory,
/// the rest written at its place; nothing past the disk's end.
struct DiskWriter {
    file: std::fs::File,
    head: Vec<u8>,
    pos: u64,
    capacity: u64,
    buf: Vec<u8>,
    buf_at: u64,
}

impl DiskWriter {
    fn flush_buf(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, self.buf_at)?;
            self.buf_at += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

impl Write for DiskWriter {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let n = data.len();
        if self.pos + n as u64 > self.capacity {
            return Err(std::io::Error::other(format!(
                "the disk is too small: it holds {}, and the image goes on past that",
                mib(self.capacity)
            )));
        }
        if self.pos < HEAD {
            let take = ((HEAD - self.pos) as usize).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            self.pos += take as u64;
            data = &data[take..];
        }
        if !data.is_empty() {
            self.buf.extend_from_slice(data);
            self.pos += data.len() as u64;
            if self.buf.len() >= 4 << 20 {
                self.flush_buf()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_buf()
    }
}

/// Zeroes the first and last MiB of the disk and, when the image reached
/// further, the MiB before `written` (where an image's backup partition
/// table is): no partition table, no boot loader, no file system signature
/// at the start is left.
fn wipe(file: &std::fs::File, capacity: u64, written: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; HEAD as usize];
    let mut at = vec![0, capacity.saturating_sub(HEAD)];
    if written > HEAD {
        at.push(written.saturating_sub(HEAD).max(HEAD));
    }
    for offset in at {
        let len = HEAD.min(capacity.saturating_sub(offset)) as usize;
        file.write_all_at(&zeros[..len], offset)?;
    }
    file.sync_all()
}

/// The bytes of the image as they arrive, from the network task.
struct Incoming {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for Incoming {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Decodes `input` in `format` into `out`.
fn decode(format: &str, input: Incoming, out: &mut DiskWriter) -> Result<(), String> {
    decode_into(format, std::io::BufReader::with_capacity(1 << 20, input), out)?;
    out.flush().map_err(|e| e.to_string())
}

/// Decodes an image file in `format` (`raw`, `raw.gz`, `raw.xz`,
/// `raw.zst`) from `input` into `out`; qcow2 is refused, saying how to
/// convert it.
pub fn decode_into(format: &str, mut input: impl std::io::BufRead, out: &mut impl Write) -> Result<(), String> {
    let e = |e: std::io::Error| e.to_string();
    match format {
        "raw" => {
            std::io::copy(&mut input, out).map_err(e)?;
        }
        "raw.gz" => {
            // Every gzip member, as gunzip does.
            std::io::copy(&mut flate2::bufread::MultiGzDecoder::new(&mut input), out).map_err(e)?;
        }
        "raw.xz" => lzma_rs::xz_decompress(&mut input, out).map_err(|e| e.to_string())?,
        "raw.zst" => {
            // Every frame, as zstd does (pzstd and some tools write several).
            while !input.fill_buf().map_err(e)?.is_empty() {
                let mut d = ruzstd::decoding::StreamingDecoder::new(&mut input).map_err(|e| format!("zstd: {e}"))?;
                std::io::copy(&mut d, out).map_err(e)?;
            }
        }
        "qcow2" => return Err(QCOW2.into()),
        other => return Err(format!("image format `{other}`: expected raw, raw.gz, raw.xz, raw.zst")),
    }
    if !input.fill_buf().map_err(e)?.is_empty() {
        return Err("bytes follow the end of the compressed image".into());
    }
    Ok(())
}

/// Why qcow2 images are refused, and how to convert one.
pub const QCOW2: &str = "qcow2 images are not written while streaming (their clusters are not in disk order); \
    convert the image to raw first, e.g. `qemu-img convert -O raw disk.qcow2 disk.raw && zstd disk.raw`, \
    and import disk.raw.zst";

/// One progress line, which the agent running the job forwards to the
/// machine's timeline (`plinth-progress done=N total=M rate=R <what>`).
fn progress(done: u64, total: Option<u64>, rate: u64, what: &str) {
    let pct = total.filter(|t| *t > 0).map(|t| format!(" ({}%)", done * 100 / t)).unwrap_or_default();
    let of = total.map(|t| format!(" of {}", mib(t))).unwrap_or_default();
    println!("{}{of}{pct} received, {}/s", mib(done), mib(rate));
    println!(
        "plinth-progress done={done}{} rate={rate} {what}",
        total.map(|t| format!(" total={t}")).unwrap_or_default()
    );
    let _ = std::io::stdout().flush();
}

/// Why a transfer stopped.
#[derive(Debug)]
enum Stop {
    /// Worth another attempt: a connection that broke or was refused, a
    /// 5xx answer.
    Again(String),
    /// Not: a 4xx answer, a size that does not match, a resume elsewhere.
    Fatal(String),
    /// The writer gave up first (it says why).
    WriterStopped,
}

/// Fetches `url` into `tx`, resuming with `Range` after a dropped
/// connection; `prepare` runs once, when the first answer is good and
/// before any byte is sent on (the disk is wiped then, not for a URL that
/// does not answer). The SHA-256 and length of what was sent.
async fn fetch(
    http: &reqwest::Client,
    o: &Options,
    what: &str,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    mut prepare: Option<Box<dyn FnOnce() -> Result<(), String> + Send + '_>>,
) -> Result<(String, u64), Stop> {
    let mut hasher = sha2::Sha256::new();
    let mut received: u64 = 0;
    let mut attempt = 0;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut expected = o.size;
    loop {
        attempt += 1;
        let mut req = http.get(&o.url);
        if received > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={received}-"));
        }
        let outcome: Result<(), Stop> = async {
            let mut resp = req.send().await.map_err(|e| Stop::Again(format!("cannot reach {}: {e}", o.url)))?;
            let status = resp.status();
            let mut skip = 0u64;
            if received > 0 && status == reqwest::StatusCode::OK {
                // The server ignored the range: skip what was already had.
                skip = received;
            } else if received > 0 && status == reqwest::StatusCode::PARTIAL_CONTENT {
                let start = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(received) {
                    return Err(Stop::Fatal(format!("the server resumed at {start:?}, not at byte {received}")));
                }
            } else if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
                return Err(Stop::Fatal(format!(
                    "the image at {} ends at {received} bytes; it was expected to be longer",
                    o.url
                )));
            } else if status.is_server_error() {
                return Err(Stop::Again(format!("{} answered {status}", o.url)));
            } else if !status.is_success() {
                return Err(Stop::Fatal(format!("{} answered {status}", o.url)));
            }
            if received == 0
                && let Some(len) = resp.content_length()
            {
                if let Some(size) = o.size
                    && size != len
                {
                    return Err(Stop::Fatal(format!("{} is {len} bytes; the image is registered as {size}", o.url)));
                }
                expected = Some(len);
            }
            if let Some(first) = prepare.take() {
                first().map_err(Stop::Fatal)?;
            }
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) if expected.is_none_or(|e| received >= e) => return Ok(()),
                    Ok(None) => return Err(Stop::Again(format!("the transfer ended early at {}", mib(received)))),
                    Err(e) => return Err(Stop::Again(format!("the transfer broke at {}: {e}", mib(received)))),
                };
                let mut data: &[u8] = &chunk;
                if skip > 0 {
                    let n = usize::try_from(skip).unwrap_or(usize::MAX).min(data.len());
                    data = &data[n..];
                    skip -= n as u64;
                }
                if data.is_empty() {
                    continue;
                }
                hasher.update(data);
                received += data.len() as u64;
                if tx.send(data.to_vec()).is_err() {
                    return Err(Stop::WriterStopped);
                }
                if last_report.elapsed() >= o.progress_every {
                    let rate = (received as f64 / started.elapsed().as_secs_f64().max(0.001)) as u64;
                    progress(received, expected, rate, what);
                    last_report = Instant::now();
                }
            }
        }
        .await;
        match outcome {
            Ok(()) => break,
            Err(Stop::Again(why)) if attempt < o.attempts => println!("{why}"),
            Err(Stop::Again(why)) => {
                return Err(Stop::Fatal(format!(
                    "{why}; the transfer of {} stopped at {} after {attempt} attempts",
                    o.url,
                    mib(received)
                )));
            }
            Err(other) => return Err(other),
        }
        let wait = Duration::from_secs(1 << attempt.min(4));
        if received > 0 {
            println!(
                "resuming at byte {received} with a Range request in {} s (attempt {})",
                wait.as_secs(),
                attempt + 1
            );
        } else {
            println!("trying again in {} s (attempt {})", wait.as_secs(), attempt + 1);
        }
        tokio::time::sleep(wait).await;
    }
    let rate = (received as f64 / started.elapsed().as_secs_f64().max(0.001)) as u64;
    progress(received, expected, rate, what);
    Ok((hasher.finalize().iter().map(|b| format!("{b:02x}")).collect(), received))
}

/// Deploys the image; what it did, for the log.
pub async fn deploy(o: &Options) -> Result<String, String> {
    let want = o.sha256.to_ascii_lowercase();
    if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("--sha256 must be 64 hex digits, got `{}`", o.sha256));
    }
    if o.format == "qcow2" {
        return Err(QCOW2.into());
    }
    if let Some(seed) = &o.seed_url
        && !seed_url_ok(seed)
    {
        // Never echoed: it carries the machine's metadata token.
        return Err(
            "the seed URL is not an http(s) URL of the form http://HOST:PORT/t/<token>/ (is boot HTTP listening?)"
                .into(),
        );
    }
    let disk = choose(&o.disk, &o.sysfs, &o.dev)?;
    if let Some(raw) = o.raw_size
        && raw > disk.size
    {
        return Err(format!(
            "disk {} holds {}; the image needs {}: the disk is too small",
            disk.name,
            mib(disk.size),
            mib(raw)
        ));
    }
    println!(
        "target disk {} ({}){}",
        disk.node.display(),
        mib(disk.size),
        disk.serial.as_ref().map(|s| format!(", serial {s}")).unwrap_or_default()
    );
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk.node)
        .map_err(|e| format!("cannot open {} for writing: {e}", disk.node.display()))?;

    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(64);
    let writer_file = file.try_clone().map_err(|e| e.to_string())?;
    let (format, capacity) = (o.format.clone(), disk.size);
    let writer = std::thread::spawn(move || {
        let mut out =
            DiskWriter { file: writer_file, head: Vec::new(), pos: 0, capacity, buf: Vec::new(), buf_at: HEAD };
        let input = Incoming { rx, chunk: Vec::new(), at: 0 };
        let r = decode(&format, input, &mut out);
        (r, out.head, out.pos)
    });
    let what = format!("image to {}", disk.name);
    let started = Instant::now();
    // The disk is wiped once the image's server answers, before any byte
    // of it is written.
    let touched = std::sync::atomic::AtomicBool::new(false);
    let wipe_first = || {
        touched.store(true, std::sync::atomic::Ordering::SeqCst);
        wipe(&file, disk.size, 0).map_err(|e| format!("cannot wipe {}: {e}", disk.node.display()))?;
        println!("wiped the first and last MiB of {}: it does not boot until the image is verified", disk.name);
        Ok(())
    };
    let fetched = fetch(&http, o, &what, tx, Some(Box::new(wipe_first))).await;
    let fail = |why: String, written: u64| -> Result<String, String> {
        if !touched.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(format!("{why}; the disk was not touched"));
        }
        let wiped = match wipe(&file, disk.size, written) {
            Ok(()) => "the disk was wiped and does not boot",
            Err(_) => "and wiping the disk failed too",
        };
        Err(format!("{why}; {wiped}"))
    };
    let Ok((decoded, head, written)) = writer.join() else {
        return fail("the image writer stopped unexpectedly".into(), disk.size);
    };
    // What explains a failure best: the transfer's own error, then the
    // checksum, then the decoder (which a wrong image makes fail too).
    let (sum, received) = match (fetched, &decoded) {
        (Err(Stop::Again(e) | Stop::Fatal(e)), _) => return fail(e, written),
        (Err(Stop::WriterStopped), Err(e)) => {
            return fail(format!("writing the image ({}) failed: {e}", o.format), written);
        }
        (Err(Stop::WriterStopped), Ok(())) => return fail("the image writer stopped".into(), written),
        (Ok(f), _) => f,
    };
    if sum != want {
        return fail(
            format!("the image's SHA-256 is {sum}, not {want} as registered ({received} bytes received): refused"),
            written,
        );
    }
    if let Err(e) = decoded {
        return fail(format!("writing the image ({}) failed: {e}", o.format), written);
    }
    if let Some(size) = o.size
        && size != received
    {
        return fail(format!("{received} bytes arrived; the image is registered as {size}"), written);
    }
    if let Some(raw) = o.raw_size
        && raw != written
    {
        return fail(format!("the image decoded to {written} bytes; it is registered as {raw}"), written);
    }
    let table = crate::gpt::Table::parse(&head);
    let block_device = disk.node.starts_with(&o.dev);
    if block_device && o.seed_url.is_some() && table.as_ref().and_then(crate::gpt::Table::root).is_none() {
        return fail(
            "the image has no GPT with a Linux root partition to leave its cloud-init seed on".into(),
            written,
        );
    }
    // Verified: everything else is on the disk before the partition table.
    if let Err(e) = file.sync_all().and_then(|_| file.write_all_at(&head, 0)).and_then(|_| file.sync_all()) {
        return fail(format!("cannot write the image's first MiB: {e}"), written);
    }
    let secs = started.elapsed().as_secs_f64();
    let mut report = format!(
        "wrote {} ({} as served, SHA-256 verified) to {} in {:.1} s, {:.1} MiB/s",
        mib(written),
        mib(received),
        disk.node.display(),
        secs,
        written as f64 / 1048576.0 / secs.max(0.001)
    );
    println!("{report}");
    if !block_device {
        // A regular file: no partitions to read again, mount or boot.
        return Ok(report);
    }
    reread_partitions(&disk.node);
    if let (Some(seed), Some(t)) = (&o.seed_url, &table) {
        match leave_seed(o, &disk, t, seed) {
            Ok(m) => report.push_str(&format!("; {m}")),
            Err(e) => return fail(format!("the image is written, but its seed is not: {e}"), written),
        }
    }
    drop(file);
    if std::fs::read_dir(&o.efivars).is_ok_and(|mut d| d.next().is_some()) {
        match table.as_ref().and_then(|t| t.esp()) {
            Some(esp) => {
                let loader = o.efi_loader.clone().unwrap_or_else(|| "\\EFI\\BOOT\\BOOTX64.EFI".into());
                match crate::gpt::add_boot_entry(&o.efivars, &o.efi_label, esp, &loader) {
                    Ok(m) => report.push_str(&format!("; {m}")),
                    Err(e) => println!("no UEFI boot entry: {e}"),
                }
            }
            None => println!("no UEFI boot entry: the image has no EFI system partition"),
        }
    }
    Ok(report)
}

/// Whether `seed` is an http(s) URL with a host and no spaces.
fn seed_url_ok(seed: &str) -> bool {
    let rest = seed.strip_prefix("http://").or_else(|| seed.strip_prefix("https://"));
    rest.is_some_and(|r| {
        !r.is_empty() && !r.starts_with('/') && !seed.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

/// Asks the kernel to read the new partition table.
fn reread_partitions(node: &Path) {
    let done = std::process::Command::new("blockdev").arg("--rereadpt").arg(node).status();
    if !done.is_ok_and(|s| s.success()) {
        println!("blockdev --rereadpt {} failed; partitions may not show until a reboot", node.display());
    }
    std::thread::sleep(Duration::from_millis(500));
}

/// The device node of partition `n` of `disk` (`vda2`, `nvme0n1p2`).
fn partition_node(disk: &Disk, dev: &Path, n: u32) -> PathBuf {
    let sep = if disk.name.ends_with(|c: char| c.is_ascii_digit()) { "p" } else { "" };
    dev.join(format!("{}{sep}{n}", disk.name))
}

/// Mounts the image's root file system and writes cloud-init's NoCloud
/// seed there: where this machine's metadata is, read on its first boot
/// (and kept: `manual_cache_clean`, so an expired token is never asked again).
fn leave_seed(o: &Options, disk: &Disk, table: &crate::gpt::Table, seed: &str) -> Result<String, String> {
    let root = table.root().ok_or("the image has no Linux root partition (by GPT type) for the seed")?;
    let node = partition_node(disk, &o.dev, root.number);
    let mnt = std::env::temp_dir().join(format!("plinth-seed-{}", std::process::id()));
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    let mounted = std::process::Command::new("mount").arg(&node).arg(&mnt).status();
    if !mounted.is_ok_and(|s| s.success()) {
        let _ = std::fs::remove_dir(&mnt);
        return Err(format!("cannot mount {}", node.display()));
    }
    let written = (|| -> Result<(), String> {
        let dir = mnt.join("etc/cloud/cloud.cfg.d");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let text = format!(
            "# Written by Plinth's image deploy: where cloud-init reads this machine's metadata.\n\
             datasource_list: [ NoCloud, None ]\n\
             datasource:\n  NoCloud:\n    seedfrom: {seed}\n\
             manual_cache_clean: true\n"
        );
        let path = dir.join("90-plinth-seed.cfg");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| e.to_string())?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| e.to_string())
    })();
    let unmounted = std::process::Command::new("umount").arg(&mnt).status();
    let _ = std::fs::remove_dir(&mnt);
    written?;
    if !unmounted.is_ok_and(|s| s.success()) {
        return Err(format!("cannot unmount {}", node.display()));
    }
    Ok(format!("left the NoCloud seed on {}", node.display()))
}

use std::os::unix::fs::OpenOptionsExt;
