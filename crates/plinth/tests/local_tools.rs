//! The local tools on the server's host cannot be turned by another local
//! user: `plinth discovery build` unpacks a kernel package into a scratch
//! folder nobody else can name in advance or write into, while an
//! unprivileged user races it as the probe did.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tar entry (ustar) of a regular file.
fn tar_entry(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar ");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A kernel package: an x86-64 "kernel" (the bzImage magic) and one module.
fn kernel_deb(path: &Path) {
    let mut kernel = vec![0u8; 8192];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    let mut tar = Vec::new();
    tar_entry(&mut tar, "./boot/vmlinuz-6.1.0-99-amd64", &kernel);
    tar_entry(&mut tar, "./lib/modules/6.1.0-99-amd64/kernel/drivers/net/e1000.ko", b"\0depends=\0module body");
    tar.extend_from_slice(&[0u8; 1024]);
    let mut deb = b"!<arch>\n".to_vec();
    for (name, body) in [("debian-binary", &b"2.0\n"[..]), ("control.tar.xz", b"x"), ("data.tar", &tar)] {
        deb.extend_from_slice(
            format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, 100644, body.len()).as_bytes(),
        );
        deb.extend_from_slice(body);
        if body.len() % 2 == 1 {
            deb.push(b'\n');
        }
    }
    std::fs::write(path, deb).unwrap();
}

#[test]
fn an_unprivileged_user_racing_discovery_build_writes_nothing_anywhere() {
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/lab/plinth-agent");
    if !common::have("setpriv") || !common::have("/bin/busybox") || !common::have(agent.to_str().unwrap()) {
        return;
    }
    // Only root can run the racer as another user.
    let me = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        eprintln!("SKIPPED: needs root to run a racer as another user");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let deb = work.path().join("linux-image.deb");
    kernel_deb(&deb);
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nTEST\n-----END CERTIFICATE-----\n").unwrap();
    // What the attacker wants the build to write into: a folder of its own.
    let bait = tempfile::Builder::new().prefix("plinth-bait-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(bait.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    // The racer, as `nobody`: plant links under every scratch name it can
    // guess or see, over and over, for as long as the build runs.
    let script = format!(
        r#"end=$(( $(date +%s) + 20 ))
while [ "$(date +%s)" -lt "$end" ] && [ ! -e {stop} ]; do
  for pid in $(seq $(( $$ - 50 )) $(( $$ + 400 ))); do ln -sn {bait} /tmp/plinth-kernel-$pid 2>/dev/null; done
  for d in /tmp/plinth-kernel-*; do
    [ -L "$d" ] && continue
    [ -d "$d" ] || continue
    ln -sn {bait} "$d/lib" 2>/dev/null && echo "planted in $d"
    mkdir "$d/racer-was-here" 2>/dev/null && echo "wrote into $d"
  done
done"#,
        bait = bait.path().display(),
        stop = work.path().join("stop").display()
    );
    let racer = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", &script])
        .current_dir("/tmp")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let files = work.path().join("files");
    let out = Command::new(common::bin())
        .args(["discovery", "build", "--with-modules", "e1000", "--kernel-package"])
        .arg(&deb)
        .arg("--busybox")
        .arg("/bin/busybox")
        .arg("--agent")
        .arg(&agent)
        .arg("--ca-cert")
        .arg(&ca)
        .arg("--file-root")
        .arg(&files)
        .output()
        .unwrap();
    std::fs::write(work.path().join("stop"), "").unwrap();
    let raced = racer.wait_with_output().unwrap();
    // The racer's planted links in /tmp are its own to clean; ours are not.
    for e in std::fs::read_dir("/tmp").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("plinth-kernel-") && e.file_type().is_ok_and(|t| t.is_symlink()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(files.join("discovery/initrd.img").is_file() && files.join("discovery/vmlinuz").is_file());
    let planted = String::from_utf8_lossy(&raced.stdout);
    assert!(planted.trim().is_empty(), "the racer got in: {planted}");
    let written: Vec<_> = std::fs::read_dir(bait.path()).unwrap().collect();
    assert!(written.is_empty(), "the build wrote into the attacker's folder: {written:?}");
    eprintln!("build took {:?} while raced", started.elapsed());
}
