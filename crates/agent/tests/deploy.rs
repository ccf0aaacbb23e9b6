//! The image deploy against a real HTTP server (a small one here, with
//! Range, 404 and a connection it drops) and real compressors (gzip, xz,
//! zstd): a regular file stands for the disk, a folder for sysfs.

use plinth_agent::deploy::{self, DiskRule, Options};
use sha2::Digest;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A raw image: a GPT-looking first MiB, then data that is not all zeros.
fn raw_image(len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    v[512..520].copy_from_slice(b"EFI PART");
    v
}

fn compress(tool: &str, data: &[u8]) -> Vec<u8> {
    let mut child = std::process::Command::new(tool)
        .args(["-c", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn sha(data: &[u8]) -> String {
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// How the server answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Serve,
    /// Closes the first connection after 300 KiB of the body.
    DropOnce,
    /// Never sends more than the first half, with the full Content-Length.
    Truncated,
    NotFound,
}

/// Serves `body` at any path until the test ends; its URL and the number
/// of requests that carried a Range header.
fn serve(body: Vec<u8>, mode: Mode) -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/image", listener.local_addr().unwrap());
    let ranges = Arc::new(AtomicUsize::new(0));
    let seen = ranges.clone();
    let body = Arc::new(body);
    std::thread::spawn(move || {
        let mut first = true;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut start = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    start = v.trim().trim_end_matches('-').parse().unwrap();
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }
            if mode == Mode::NotFound {
                let _ = stream
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found");
                continue;
            }
            let part = &body[start.min(body.len())..];
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    part.len(),
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", part.len())
            };
            let _ = stream.write_all(head.as_bytes());
            let send = match mode {
                Mode::DropOnce if first => part.len().min(300 << 10),
                Mode::Truncated => (body.len() / 2).saturating_sub(start).min(part.len()),
                _ => part.len(),
            };
            first = false;
            let _ = stream.write_all(&part[..send]);
            let _ = stream.flush();
        }
    });
    (url, ranges)
}

/// A disk: a file of `size` bytes full of 0xAA (an old system).
fn disk(dir: &Path, name: &str, size: usize) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0xAAu8; size]).unwrap();
    p
}

fn options(url: &str, sum: &str, format: &str, target: &Path) -> Options {
    Options {
        url: url.into(),
        sha256: sum.into(),
        format: format.into(),
        disk: DiskRule { path: Some(target.to_string_lossy().into_owned()), ..Default::default() },
        sysfs: "/nonexistent".into(),
        dev: "/dev".into(),
        efivars: "/nonexistent".into(),
        attempts: 3,
        progress_every: std::time::Duration::from_secs(60),
        ..Default::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn every_format_lands_on_the_disk_as_the_raw_image() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_image(3 << 20);
    for (format, served) in [
        ("raw", raw.clone()),
        ("raw.gz", compress("gzip", &raw)),
        ("raw.xz", compress("xz", &raw)),
        ("raw.zst", compress("zstd", &raw)),
    ] {
        let target = disk(dir.path(), format, 4 << 20);
        let (url, _) = serve(served.clone(), Mode::Serve);
        let mut o = options(&url, &sha(&served), format, &target);
        o.size = Some(served.len() as u64);
        let report = rt().block_on(deploy::deploy(&o)).unwrap_or_else(|e| panic!("{format}: {e}"));
        assert!(report.contains("SHA-256 verified"), "{report}");
        let on_disk = std::fs::read(&target).unwrap();
        assert_eq!(&on_disk[..raw.len()], &raw[..], "{format}: the disk holds the image");
    }
}

#[test]
fn a_wrong_checksum_is_refused_and_leaves_the_disk_unbootable() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_image(3 << 20);
    let served = compress("zstd", &raw);
    let target = disk(dir.path(), "disk", 4 << 20);
    let (url, _) = serve(served, Mode::Serve);
    let e = rt().block_on(deploy::deploy(&options(&url, &"0".repeat(64), "raw.zst", &target))).unwrap_err();
    assert!(e.contains("SHA-256") && e.contains("refused") && e.contains("does not boot"), "{e}");
    let on_disk = std::fs::read(&target).unwrap();
    assert!(on_disk[..1 << 20].iter().all(|b| *b == 0), "no partition table is left");
    assert!(on_disk[(3 << 20)..].iter().all(|b| *b == 0), "no backup table at the end either");
    assert!(!on_disk.windows(8).any(|w| w == b"EFI PART"), "no GPT signature anywhere");
}

#[test]
fn a_missing_image_is_a_clear_failure() {
    let dir = tempfile::tempdir().unwrap();
    let target = disk(dir.path(), "disk", 2 << 20);
    let (url, _) = serve(Vec::new(), Mode::NotFound);
    let e = rt().block_on(deploy::deploy(&options(&url, &"a".repeat(64), "raw", &target))).unwrap_err();
    assert!(e.contains("404") && e.contains("not touched"), "{e}");
    assert!(std::fs::read(&target).unwrap().iter().all(|b| *b == 0xAA), "the old system is still there");
}

#[test]
fn several_zstd_frames_decode_and_trailing_bytes_or_a_short_image_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_image(3 << 20);
    // Two frames, as pzstd writes them.
    let mut served = compress("zstd", &raw[..1 << 20]);
    served.extend(compress("zstd", &raw[1 << 20..]));
    let target = disk(dir.path(), "frames", 4 << 20);
    let (url, _) = serve(served.clone(), Mode::Serve);
    let mut o = options(&url, &sha(&served), "raw.zst", &target);
    o.raw_size = Some(raw.len() as u64);
    rt().block_on(deploy::deploy(&o)).unwrap();
    assert_eq!(&std::fs::read(&target).unwrap()[..raw.len()], &raw[..]);
    // Garbage after the gzip stream.
    let mut trailing = compress("gzip", &raw);
    trailing.extend_from_slice(b"not gzip");
    let target = disk(dir.path(), "trailing", 4 << 20);
    let (url, _) = serve(trailing.clone(), Mode::Serve);
    let e = rt().block_on(deploy::deploy(&options(&url, &sha(&trailing), "raw.gz", &target))).unwrap_err();
    assert!(e.contains("does not boot"), "{e}");
    // An image that decodes shorter than registered.
    let target = disk(dir.path(), "short", 4 << 20);
    let (url, _) = serve(raw.clone(), Mode::Serve);
    let mut o = options(&url, &sha(&raw), "raw", &target);
    o.raw_size = Some(raw.len() as u64 + 4096);
    let e = rt().block_on(deploy::deploy(&o)).unwrap_err();
    assert!(e.contains("registered as") && e.contains("does not boot"), "{e}");
    assert!(std::fs::read(&target).unwrap()[..1 << 20].iter().all(|b| *b == 0));
}

#[test]
fn a_bad_seed_url_is_refused_before_the_disk_is_touched_and_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let target = disk(dir.path(), "disk", 2 << 20);
    let mut o = options("http://127.0.0.1:1/x", &"a".repeat(64), "raw", &target);
    o.seed_url = Some("/t/plt_secret.token/".into());
    let e = rt().block_on(deploy::deploy(&o)).unwrap_err();
    assert!(e.contains("seed URL") && !e.contains("plt_secret"), "{e}");
    assert!(std::fs::read(&target).unwrap().iter().all(|b| *b == 0xAA));
}

#[test]
fn a_dropped_transfer_resumes_with_range() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_image(3 << 20);
    let target = disk(dir.path(), "disk", 4 << 20);
    let (url, ranges) = serve(raw.clone(), Mode::DropOnce);
    let report = rt().block_on(deploy::deploy(&options(&url, &sha(&raw), "raw", &target))).unwrap();
    assert!(report.contains("verified"), "{report}");
    assert!(ranges.load(Ordering::SeqCst) >= 1, "the rest came with a Range request");
    assert_eq!(&std::fs::read(&target).unwrap()[..raw.len()], &raw[..]);
}

#[test]
fn a_stream_that_stays_short_fails_after_its_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_image(2 << 20);
    let target = disk(dir.path(), "disk", 4 << 20);
    let (url, ranges) = serve(raw.clone(), Mode::Truncated);
    let e = rt().block_on(deploy::deploy(&options(&url, &sha(&raw), "raw", &target))).unwrap_err();
    assert!(e.contains("does not boot"), "{e}");
    assert!(ranges.load(Ordering::SeqCst) >= 1, "{e}");
    assert!(std::fs::read(&target).unwrap()[..1 << 20].iter().all(|b| *b == 0));
}

#[test]
fn a_disk_too_small_is_refused_before_or_while_writing() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_image(3 << 20);
    let target = disk(dir.path(), "disk", 2 << 20);
    let (url, _) = serve(raw.clone(), Mode::Serve);
    let mut o = options(&url, &sha(&raw), "raw", &target);
    o.raw_size = Some(raw.len() as u64);
    let e = rt().block_on(deploy::deploy(&o)).unwrap_err();
    assert!(e.contains("too small"), "{e}");
    assert_eq!(std::fs::read(&target).unwrap()[0], 0xAA, "refused before anything was written");
    o.raw_size = None;
    let e = rt().block_on(deploy::deploy(&o)).unwrap_err();
    assert!(e.contains("too small") && e.contains("does not boot"), "{e}");
}

#[test]
fn qcow2_is_refused_with_how_to_convert_it() {
    let dir = tempfile::tempdir().unwrap();
    let target = disk(dir.path(), "disk", 2 << 20);
    let o = options("http://127.0.0.1:1/x", &"a".repeat(64), "qcow2", &target);
    let e = rt().block_on(deploy::deploy(&o)).unwrap_err();
    assert!(e.contains("qemu-img convert -O raw"), "{e}");
}

/// A sysfs with block devices `disks`: (name, sectors, serial).
fn sysfs(dir: &Path, disks: &[(&str, u64, Option<&str>)]) -> PathBuf {
    let root = dir.join("sys");
    for (name, sectors, serial) in disks {
        let d = root.join("block").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
        std::fs::write(d.join("ro"), "0\n").unwrap();
        std::fs::write(d.join("removable"), "0\n").unwrap();
        if let Some(s) = serial {
            std::fs::write(d.join("serial"), s).unwrap();
        }
    }
    root
}

#[test]
fn two_candidate_disks_without_a_rule_are_refused_and_a_rule_picks_one() {
    let dir = tempfile::tempdir().unwrap();
    let sys = sysfs(
        dir.path(),
        &[("vda", 20971520, Some("AAA")), ("vdb", 41943040, Some("BBB")), ("loop0", 100, None), ("sr0", 100, None)],
    );
    let dev = dir.path().join("dev");
    let rule = |r: DiskRule| deploy::choose(&r, &sys, &dev);
    let e = rule(DiskRule::default()).unwrap_err();
    assert!(e.contains("2 disks could take the image") && e.contains("vda") && e.contains("vdb"), "{e}");
    assert!(e.contains("image-disk"), "the refusal says how to choose: {e}");
    assert_eq!(rule(DiskRule { serial: Some("BBB".into()), ..Default::default() }).unwrap().name, "vdb");
    assert_eq!(rule(DiskRule { pick: Some("smallest".into()), ..Default::default() }).unwrap().name, "vda");
    assert_eq!(rule(DiskRule { pick: Some("largest".into()), ..Default::default() }).unwrap().name, "vdb");
    assert_eq!(rule(DiskRule { min_size: Some(15 << 30), ..Default::default() }).unwrap().name, "vdb");
    let e = rule(DiskRule { serial: Some("ZZZ".into()), ..Default::default() }).unwrap_err();
    assert!(e.contains("no disk matches"), "{e}");
    let e = rule(DiskRule { pick: Some("biggest".into()), ..Default::default() }).unwrap_err();
    assert!(e.contains("expected smallest, largest or first"), "{e}");
    // One disk: no rule needed.
    let one = sysfs(&dir.path().join("one"), &[("nvme0n1", 2048, None)]);
    assert_eq!(deploy::choose(&DiskRule::default(), &one, &dev).unwrap().name, "nvme0n1");
}
