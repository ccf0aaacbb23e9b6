//! The README's examples, run as written against a fresh server: each
//! command of the blocks in [`BLOCKS`], in order, with only the server's
//! address, CA and admin password file put in for the ones the README names.
//! A command that stops working there fails this test.

mod common;

use common::{PASSWORD, Server};
use std::time::Duration;

/// The commands of the first `sh` block after `heading`, with `\`
/// continuations and quotes that span lines joined, and comments dropped.
fn sh_block(readme: &str, heading: &str) -> Vec<String> {
    let from = readme.find(heading).unwrap_or_else(|| panic!("README has no `{heading}`"));
    let rest = &readme[from..];
    let start = rest.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let end = start + rest[start..].find("```").expect("the block ends");
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in rest[start..end].lines() {
        let line = match line.find("  #") {
            Some(i) => &line[..i],
            None => line,
        };
        let line = line.trim_end();
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        // A single-quoted string that goes on to the next line.
        if current.matches('\'').count() % 2 == 1 {
            current.push('\n');
            continue;
        }
        if !current.trim().is_empty() {
            commands.push(std::mem::take(&mut current).trim().to_owned());
        }
        current.clear();
    }
    commands
}

/// The README's blocks this test runs, in the README's order, on one server.
/// Blocks it does not run, and why, are listed in docs/testing.md.
const BLOCKS: &[&str] = &["## First steps", "## Network boot"];

#[test]
fn the_first_steps_and_network_boot_run_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let server = Server::start();
    let password = server.dir.join("initial-admin-password");
    std::fs::write(&password, PASSWORD).unwrap();
    // Commands run in a folder whose `./plinth-data` is the server's data
    // directory, as in the README (the server started in that folder).
    let cwd = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&server.dir, cwd.path().join("plinth-data")).unwrap();
    let bin_dir = cwd.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(common::bin(), bin_dir.join("plinth")).unwrap();
    for heading in BLOCKS {
        let commands = sh_block(&readme, heading);
        assert!(commands.len() >= 3, "{heading}: {commands:?}");
        for command in &commands {
            if command.starts_with("alias plinth=") {
                // The test runs the built binary itself.
                continue;
            }
            if command.starts_with("plinth bootloaders install") && !std::path::Path::new("/usr/lib/ipxe").exists() {
                eprintln!("SKIPPED: `{command}` needs Debian's ipxe package");
                assert!(std::env::var_os("CI").is_none(), "CI installs ipxe");
                continue;
            }
            let line = command
                .replace("https://127.0.0.1:8092", &server.url)
                .replace("plinth-data/tls/ca.pem", &server.ca().display().to_string())
                .replace("plinth-data/initial-admin-password", &password.display().to_string());
            // `events` follows changes until stopped: it must still be
            // running (connected, not refused) after two seconds.
            let follows = line.starts_with("plinth events");
            let script = format!("{}{line}", if follows { "timeout 2 " } else { "" });
            // `plinth` on PATH is the built binary; its configuration is the
            // test's own (login writes it), never the user's.
            let mut sh = std::process::Command::new("bash");
            sh.arg("-c")
                .arg(&script)
                .current_dir(cwd.path())
                .env("PATH", format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default()))
                .env("PLINTH_CONFIG", server.dir.join("cli-config.json"))
                .env_remove("PLINTH_ENDPOINT")
                .env_remove("PLINTH_CA_CERT")
                .env_remove("PLINTH_TOKEN")
                .stdin(std::process::Stdio::null());
            let started = std::time::Instant::now();
            let out = sh.output().unwrap();
            let code = out.status.code();
            if follows {
                assert_eq!(code, Some(124), "`{command}` ended early: {}", String::from_utf8_lossy(&out.stderr));
                assert!(started.elapsed() >= Duration::from_secs(2));
            } else {
                assert!(
                    out.status.success(),
                    "README command `{command}` ({heading}) failed ({code:?}):\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    // What the blocks did is there: the loaders in the server's file root,
    // the reservation in its subnet.
    if std::path::Path::new("/usr/lib/ipxe").exists() {
        assert!(server.files().join("undionly.kpxe").exists(), "bootloaders install filled the file root");
    }
    let reservations = common::cli_json(&server, &["reservations", "list"]);
    assert!(reservations.to_string().contains("10.0.0.10"), "{reservations}");
}
