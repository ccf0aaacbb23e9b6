//! Images made by the real tools (xorriso, genisoimage from Debian), read
//! back with each naming: Rock Ridge, Joliet only, plain ISO 9660; deep
//! directories that Rock Ridge relocates; symbolic links; and broken input.

use plinth_iso::{Entry, ImportError, Iso, IsoError, Naming, import, sha256_file};
use std::path::{Path, PathBuf};
use std::process::Command;

fn have(tool: &str) -> bool {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).status().is_ok_and(|s| s.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{tool} missing; .ci/run installs it");
        eprintln!("SKIPPED: {tool} not installed");
    }
    found
}

/// A tree like an installer ISO's, with awkward cases.
fn tree(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("casper")).unwrap();
    std::fs::create_dir_all(src.join("images/pxeboot")).unwrap();
    let kernel: Vec<u8> = (0..3 * 2048 + 77).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("casper/vmlinuz"), &kernel).unwrap();
    std::fs::write(src.join("casper/initrd"), b"").unwrap();
    std::fs::write(src.join("images/pxeboot/initrd.img"), vec![0xA5; 100_000]).unwrap();
    std::fs::write(src.join("Release Notes – Long Name.txt"), "notes").unwrap();
    let mut deep = src.join("pool");
    for i in 0..10 {
        deep = deep.join(format!("d{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("deep.deb"), "deep file").unwrap();
    std::os::unix::fs::symlink(".", src.join("ubuntu")).unwrap();
    src
}

fn make(dir: &Path, tool: &str, flags: &[&str]) -> PathBuf {
    let src = tree(dir);
    let iso = dir.join("image.iso");
    let mut cmd = Command::new(tool);
    if tool == "xorriso" {
        cmd.args(["-as", "mkisofs"]);
    }
    let out = cmd.args(flags).args(["-V", "PLINTH_TEST", "-o"]).arg(&iso).arg(&src).output().unwrap();
    assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
    iso
}

fn read_all(iso: &Path) -> (Naming, Vec<(String, Vec<u8>)>, usize) {
    let mut img = Iso::open(std::fs::File::open(iso).unwrap()).unwrap();
    let naming = img.naming();
    let mut out = Vec::new();
    let mut links = 0;
    for (path, entry) in img.walk().unwrap() {
        match &entry {
            Entry::File { .. } => {
                let mut bytes = Vec::new();
                img.copy(&entry, &mut bytes).unwrap();
                out.push((path.join("/"), bytes));
            }
            Entry::Symlink { .. } => links += 1,
            Entry::Dir { .. } => {}
        }
    }
    out.sort();
    (naming, out, links)
}

fn find<'a>(files: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &files.iter().find(|(p, _)| p == name).unwrap_or_else(|| panic!("{name} not in {:?}", names(files))).1
}

fn names(files: &[(String, Vec<u8>)]) -> Vec<&str> {
    files.iter().map(|(p, _)| p.as_str()).collect()
}

#[test]
fn rock_ridge_names_relocated_directories_and_links() {
    for tool in ["xorriso", "genisoimage"] {
        if !have(tool) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let iso = make(dir.path(), tool, &["-R", "-J", "-joliet-long"]);
        let (naming, files, links) = read_all(&iso);
        assert!(matches!(naming, Naming::RockRidge { .. }), "{tool}: {naming:?}");
        assert_eq!(find(&files, "casper/vmlinuz"), std::fs::read(dir.path().join("src/casper/vmlinuz")).unwrap());
        assert_eq!(find(&files, "casper/initrd"), b"");
        assert_eq!(find(&files, "images/pxeboot/initrd.img"), vec![0xA5; 100_000]);
        assert_eq!(find(&files, "Release Notes – Long Name.txt"), b"notes");
        // genisoimage relocates directories deeper than 8 (RR_MOVED + CL/RE).
        assert_eq!(find(&files, "pool/d0/d1/d2/d3/d4/d5/d6/d7/d8/d9/deep.deb"), b"deep file", "{tool}");
        assert!(!names(&files).iter().any(|n| n.contains("rr_moved")), "{tool}: {:?}", names(&files));
        assert_eq!(links, 1, "{tool}: the `ubuntu -> .` link is seen and not followed");
    }
}

#[test]
fn joliet_only_and_plain_iso9660_names() {
    if !have("genisoimage") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let iso = make(dir.path(), "genisoimage", &["-J", "-joliet-long", "-D"]);
    let (naming, files, _) = read_all(&iso);
    assert_eq!(naming, Naming::Joliet);
    assert_eq!(find(&files, "Release Notes – Long Name.txt"), b"notes");
    assert_eq!(find(&files, "images/pxeboot/initrd.img").len(), 100_000);

    let dir = tempfile::tempdir().unwrap();
    let iso = make(dir.path(), "genisoimage", &["-D", "-l"]);
    let (naming, files, _) = read_all(&iso);
    assert_eq!(naming, Naming::Plain);
    assert_eq!(find(&files, "casper/vmlinuz").len(), 3 * 2048 + 77);
    assert_eq!(find(&files, "images/pxeboot/initrd.img").len(), 100_000, "{:?}", names(&files));
}

#[test]
fn import_verifies_extracts_and_is_idempotent() {
    if !have("xorriso") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let iso = make(dir.path(), "xorriso", &["-R", "-J"]);
    let sha = sha256_file(&iso).unwrap();
    let dest = dir.path().join("files/ubuntu-24.04");

    let wrong = "0".repeat(64);
    match import(&iso, &wrong, &dest) {
        Err(ImportError::Checksum { expected, actual, .. }) => {
            assert_eq!((expected, actual.as_str()), (wrong, sha.as_str()))
        }
        other => panic!("{other:?}"),
    }
    assert!(!dest.exists(), "nothing written before the checksum matches");

    let first = import(&iso, &sha.to_uppercase(), &dest).unwrap();
    assert_eq!((first.written, first.unchanged, first.symlinks), (5, 0, 1), "{first:?}");
    assert_eq!(
        std::fs::read(dest.join("casper/vmlinuz")).unwrap(),
        std::fs::read(dir.path().join("src/casper/vmlinuz")).unwrap()
    );
    let again = import(&iso, &sha, &dest).unwrap();
    assert_eq!((again.written, again.unchanged, again.bytes), (0, 5, 0), "{again:?}");
    // A damaged file is put back; the rest stay.
    std::fs::write(dest.join("casper/vmlinuz"), "truncated").unwrap();
    let fix = import(&iso, &sha, &dest).unwrap();
    assert_eq!((fix.written, fix.unchanged), (1, 4));
    let leftovers: Vec<_> = walk(&dest).into_iter().filter(|p| p.contains("plinth-tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A symbolic link planted in the destination is not followed out of it.
    let other = dir.path().join("files/other");
    std::fs::remove_dir_all(dest.join("images")).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::os::unix::fs::symlink(&other, dest.join("images")).unwrap();
    assert!(matches!(import(&iso, &sha, &dest), Err(ImportError::Escapes(_))));
    assert!(walk(&other).is_empty(), "nothing written through the link");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p.display().to_string());
    }
    out
}

#[test]
fn broken_images_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(Iso::open(std::io::Cursor::new(vec![0u8; 40_000])), Err(IsoError::NotIso)));
    assert!(matches!(Iso::open(std::io::Cursor::new(Vec::new())), Err(IsoError::NotIso)));
    if !have("xorriso") {
        return;
    }
    let iso = std::fs::read(make(dir.path(), "xorriso", &["-R", "-J"])).unwrap();
    // Found by the fuzzer: a root directory of length 0.
    let mut empty_root = iso.clone();
    let len_at = 16 * 2048 + 156 + 10;
    empty_root[len_at..len_at + 4].copy_from_slice(&[0; 4]);
    assert!(Iso::open(std::io::Cursor::new(empty_root)).is_err());
    // Cut short, and bytes flipped across the descriptors and directories:
    // every outcome is Ok or an error.
    for cut in [17 * 2048, 20 * 2048, iso.len() / 2] {
        let r = Iso::open(std::io::Cursor::new(iso[..cut].to_vec())).and_then(|mut i| i.walk().map(|_| ()));
        assert!(r.is_err() || cut == iso.len() / 2, "cut at {cut} read as a whole image");
    }
    let mut seed = 0x2545F4914F6CDD1Du64;
    for _ in 0..300 {
        let mut img = iso.clone();
        for _ in 0..8 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = 16 * 2048 + (seed as usize % (img.len().min(64 * 2048) - 16 * 2048));
            img[at] = (seed >> 32) as u8;
        }
        if let Ok(mut i) = Iso::open(std::io::Cursor::new(img))
            && let Ok(entries) = i.walk()
        {
            for (_, e) in entries.iter().take(50) {
                let _ = i.copy(e, &mut std::io::sink());
            }
        }
    }
}

/// The image's directory record for `name` (plain ISO 9660 naming), as
/// the offset of the record in the image.
fn record_of(img: &[u8], name: &str) -> usize {
    let at = img.windows(name.len()).position(|w| w == name.as_bytes()).unwrap_or_else(|| panic!("{name}"));
    at - 33
}

/// An image that lies about its files: two names over one extent (which
/// would write its bytes as often as it is named), or one name twice, is
/// refused before anything is written.
#[test]
fn images_that_share_data_or_repeat_names_are_refused() {
    if !have("genisoimage") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("AAAA.TXT"), vec![b'a'; 5000]).unwrap();
    std::fs::write(src.join("BBBB.TXT"), vec![b'b'; 5000]).unwrap();
    let iso = dir.path().join("plain.iso");
    let out = Command::new("genisoimage").arg("-o").arg(&iso).arg(&src).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let img = std::fs::read(&iso).unwrap();
    let (a, b) = (record_of(&img, "AAAA.TXT;1"), record_of(&img, "BBBB.TXT;1"));

    let mut shared = img.clone();
    let lba = shared[a + 2..a + 10].to_vec();
    shared[b + 2..b + 10].copy_from_slice(&lba);
    let mut twice = img.clone();
    twice[b + 33..b + 33 + 10].copy_from_slice(b"AAAA.TXT;1");
    for (bad, what) in [(shared, "shared"), (twice, "twice")] {
        let path = dir.path().join(format!("{what}.iso"));
        std::fs::write(&path, &bad).unwrap();
        let dest = dir.path().join(format!("files/{what}"));
        let r = import(&path, &sha256_file(&path).unwrap(), &dest);
        match (what, r) {
            ("shared", Err(ImportError::SharedData(x, y))) => {
                assert_eq!((x.as_str(), y.as_str()), ("aaaa.txt", "bbbb.txt"))
            }
            ("twice", Err(ImportError::Duplicate(x))) => assert_eq!(x, "aaaa.txt"),
            (what, other) => panic!("{what}: {other:?}"),
        }
        assert!(!dest.exists() || walk(&dest).is_empty(), "{what}: nothing written");
    }
}

/// An import that fails midway leaves the destination as it was: no
/// partial tree, no temporary file.
#[test]
fn a_failed_import_leaves_the_destination_as_it_was() {
    if !have("xorriso") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let iso = make(dir.path(), "xorriso", &["-R", "-J"]);
    let sha = sha256_file(&iso).unwrap();
    let dest = dir.path().join("files/ubuntu-24.04");
    std::fs::create_dir_all(&dest).unwrap();
    // A file where the image has a folder: writing under it fails.
    std::fs::write(dest.join("pool"), "in the way").unwrap();
    std::fs::write(dest.join("keep.txt"), "the site's").unwrap();
    let before = walk(&dest);
    assert!(matches!(import(&iso, &sha, &dest), Err(ImportError::Write(..))));
    assert_eq!(walk(&dest), before, "the destination is as it was");
    assert_eq!(std::fs::read_to_string(dest.join("keep.txt")).unwrap(), "the site's");
}
