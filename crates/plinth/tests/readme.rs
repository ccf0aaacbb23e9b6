//! The README's "First steps", run as written against a fresh server: each
//! command of its shell block, in order, with only the server's address,
//! CA and admin password file put in for the ones the README names. A
//! command that stops working there fails this test.

mod common;

use common::{PASSWORD, Server};
use std::time::Duration;

/// The commands of the first `sh` block after `heading`, with `\`
/// continuations joined and comments dropped.
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
        if !current.trim().is_empty() {
            commands.push(std::mem::take(&mut current).trim().to_owned());
        }
        current.clear();
    }
    commands
}

#[test]
fn the_first_steps_run_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let commands = sh_block(&readme, "## First steps");
    assert!(commands.len() >= 5, "{commands:?}");
    let server = Server::start();
    let password = server.dir.join("initial-admin-password");
    std::fs::write(&password, PASSWORD).unwrap();
    let bin_dir = server.dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(common::bin(), bin_dir.join("plinth")).unwrap();
    let mut ran = 0;
    for command in &commands {
        if command.starts_with("alias plinth=") {
            // The test runs the built binary itself.
            continue;
        }
        let line = command
            .replace("https://127.0.0.1:8092", &server.url)
            .replace("plinth-data/tls/ca.pem", &server.ca().display().to_string())
            .replace("plinth-data/initial-admin-password", &password.display().to_string());
        // `events` follows changes until stopped: it must still be running
        // (connected, not refused) after two seconds.
        let follows = line.starts_with("plinth events");
        let script = format!("{}{line}", if follows { "timeout 2 " } else { "" });
        // `plinth` on PATH is the built binary; its configuration is the
        // test's own (login writes it), never the user's.
        let mut sh = std::process::Command::new("bash");
        sh.arg("-c")
            .arg(&script)
            .current_dir(&server.dir)
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
                "README command `{command}` failed ({code:?}):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ran += 1;
    }
    assert_eq!(ran, commands.len() - 1, "every command but the alias ran");
}
