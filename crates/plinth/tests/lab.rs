//! `plinth lab up` builds a namespace with a bridge, a Plinth server on it
//! and a QEMU guest that PXE-boots from that server; `plinth lab down`
//! stops them by PID and deletes the namespace.

mod common;

use common::{bin, lab};
use std::process::Command;
use std::time::{Duration, Instant};

fn namespaces() -> String {
    String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned()
}

#[test]
fn lab_up_boots_a_guest_from_its_own_server_and_down_removes_everything() {
    if !lab::can_boot(false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = format!("plt-lab-{}", std::process::id());
    let up_args = [
        "lab",
        "up",
        "--name",
        &name,
        "--machines",
        "1",
        "--memory",
        "256",
        "--disk",
        "1",
        "--net",
        "10.124.0",
        "--dir",
    ];
    let up = Command::new(bin()).args(up_args).arg(dir.path()).output().unwrap();
    let said = String::from_utf8_lossy(&up.stdout).into_owned() + &String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "{said}");
    assert!(said.contains(&format!("lab `{name}` is up")) && said.contains("52:54:00:1a:b0:00"), "{said}");
    assert!(namespaces().contains(&name));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("lab.json")).unwrap()).unwrap();
    let pids: Vec<u64> = state["pids"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect();
    assert_eq!(pids.len(), 2, "the server and one guest");
    // A second lab in the same folder is refused.
    let again =
        Command::new(bin()).args(["lab", "up", "--name", "other"]).arg("--dir").arg(dir.path()).output().unwrap();
    assert!(!again.status.success());

    // The guest's iPXE asks the lab's server for its script.
    let log = dir.path().join("server.log");
    let start = Instant::now();
    let fetched = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        // Not the DHCP offer naming the script: the script fetched over HTTP.
        if text.lines().any(|l| l.contains("http boot request") && l.contains("path=/ipxe/52-54-00-1a-b0-00")) {
            break true;
        }
        if start.elapsed() > Duration::from_secs(150) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let down = Command::new(bin()).args(["lab", "down", "--dir"]).arg(dir.path()).output().unwrap();
    let console = std::fs::read_to_string(dir.path().join("vm0.log")).unwrap_or_default();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(
        fetched,
        "the guest PXE-booted from the lab's server; console:\n{console}\nserver:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(String::from_utf8_lossy(&down.stdout).contains("is down"));
    assert!(!namespaces().contains(&name), "the namespace is gone");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")),
            "process {pid} stopped"
        );
    }
    let twice = Command::new(bin()).args(["lab", "down", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(!twice.status.success() && String::from_utf8_lossy(&twice.stderr).contains("no lab is up"));

    // Up again on the kept folder: the same store, its admin's password
    // (the CLI logs in with it) and its subnet; then down once more.
    let up = Command::new(bin()).args(up_args).arg(dir.path()).output().unwrap();
    let said = String::from_utf8_lossy(&up.stdout).into_owned() + &String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "up again on the kept folder: {said}");
    assert!(said.contains(&format!("lab `{name}` is up")), "{said}");
    let down = Command::new(bin()).args(["lab", "down", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(!namespaces().contains(&name), "the namespace is gone");
}
