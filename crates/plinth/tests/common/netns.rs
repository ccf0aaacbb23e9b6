//! Network namespaces the tests create and remove. Nothing here touches the
//! machine's own interfaces: links are created directly inside the
//! namespaces, and dropping a `Netns` deletes it with everything in it.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether this process may create namespaces (root with iproute2).
pub fn available() -> bool {
    let ok = Command::new("ip").args(["netns", "list"]).output().is_ok_and(|o| o.status.success())
        && std::fs::read_to_string("/proc/self/status")
            .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")));
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "network-namespace tests need root and iproute2 in CI");
        eprintln!("SKIPPED: network namespaces need root and iproute2");
    }
    ok
}

pub fn run(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        let name = format!("plt-{role}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        plinth::lab::Namespace::create(&name).unwrap();
        Netns { name }
    }

    /// The same namespace as `plinth lab` handles it.
    pub fn lab(&self) -> plinth::lab::Namespace {
        plinth::lab::Namespace { name: self.name.clone() }
    }

    /// `ip netns exec NAME` as a command prefix.
    pub fn prefix(&self) -> Vec<&str> {
        vec!["ip", "netns", "exec", &self.name]
    }

    pub fn ip(&self, args: &[&str]) {
        self.lab().ip(args).unwrap();
    }

    pub fn exec(&self, args: &[&str]) -> Command {
        self.lab().exec(args)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside keep a namespace alive only as long as they
        // run; the tests stop theirs by PID before this.
        let _ = self.lab().delete();
    }
}

/// Connects `a` and `b` with a veth pair created inside them.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    run(&["ip", "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns", &b.name]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}
