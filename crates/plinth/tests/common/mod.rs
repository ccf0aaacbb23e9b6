//! Test harness: runs the real `plinth` binary on port 0 with a temporary
//! data dir and talks to it over HTTPS and through the CLI.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub mod lab;
pub mod netns;

/// perfdhcp's counts of one exchange step (`DISCOVER-OFFER`,
/// `REQUEST-ACK`) in its output: (sent, received).
pub fn perfdhcp_counts(text: &str, section: &str) -> (u64, u64) {
    let mut lines = text.lines().skip_while(|l| !l.contains(section));
    let mut get = |what: &str| -> u64 {
        lines
            .by_ref()
            .find_map(|l| l.trim().strip_prefix(what).and_then(|n| n.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no `{what}` under {section} in perfdhcp output: {text}"))
    };
    let sent = get("sent packets:");
    (sent, get("received packets:"))
}

/// Whether `tool` (a command or a file path) is installed. In CI a missing
/// tool is a failure; on a developer machine the test says so and passes.
pub fn have(tool: &str) -> bool {
    let found = Path::new(tool).exists()
        || Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{tool} is missing: .ci/run installs it");
        eprintln!("SKIPPED: {tool} is not installed (see .ci/run for the packages)");
    }
    found
}

/// Stdout of a command that must succeed.
/// Polls `f` every half second until it holds; fails the test after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A CLI call that must succeed, its output as JSON.
pub fn cli_json(server: &Server, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok(server.cli(&all, None))).unwrap()
}

/// A CLI call that must fail; its stderr.
pub fn cli_err(server: &Server, args: &[&str]) -> String {
    let out = server.cli(args, None);
    assert!(!out.status.success(), "{args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

pub const PASSWORD: &str = "test-admin-password";

pub struct Server {
    child: Child,
    pub url: String,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Listener URLs by service: `api`, `http`, `tftp`.
    pub services: std::collections::HashMap<String, String>,
    /// Command prefix the server and CLI run behind.
    pub prefix: Vec<String>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_plinth")
}

impl Server {
    pub fn start() -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Server::start_in(tmp.path());
        s._tmp = Some(tmp);
        s
    }

    pub fn start_in(dir: &Path) -> Server {
        Server::start_with(
            dir,
            &[],
            &["--http-addr", "127.0.0.1:0", "--tftp-addr", "127.0.0.1:0", "--dhcp-port", "off"],
        )
    }

    /// Starts the server behind `prefix` (e.g. `ip netns exec NS`) with extra flags.
    pub fn start_with(dir: &Path, prefix: &[&str], flags: &[&str]) -> Server {
        // DHCP is answered only inside a namespace the test created (the
        // prefix enters it), never on this machine's own interfaces.
        let dhcp_off = flags.windows(2).any(|w| w == ["--dhcp-port", "off"]);
        let in_namespace =
            prefix.starts_with(&["ip", "netns", "exec"]) || std::env::var_os("PLINTH_STORM_IN_NETNS").is_some();
        assert!(dhcp_off || in_namespace, "a server with DHCP on must run inside a network namespace the test created");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.arg("serve");
        if !flags.contains(&"--api-addr") {
            cmd.args(["--api-addr", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .args(flags)
            .arg("--data-dir")
            .arg(dir)
            .env("PLINTH_ADMIN_PASSWORD", PASSWORD)
            .env("PLINTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start plinth");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let (Some(s), Some(u)) = (line.find("service=\""), line.find("url=")) {
                    let service = line[s + 9..].split('"').next().unwrap_or_default().to_owned();
                    let url = line[u + 4..].split_whitespace().next().unwrap_or_default().to_owned();
                    let _ = tx.send((service, url));
                }
                log2.lock().unwrap().push(line);
            }
        });
        let mut services = std::collections::HashMap::new();
        let listener = |f: &str| matches!(f, "--http-addr" | "--tftp-addr" | "--metrics-addr");
        let wanted = 1 + flags.iter().filter(|f| listener(f)).count()
            - flags.windows(2).filter(|w| listener(w[0]) && w[1] == "off").count();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while services.len() < wanted {
            // A listener that could not bind says so instead of listening.
            if log.lock().unwrap().iter().any(|l| l.contains("continuing without it")) && services.contains_key("api") {
                while let Ok((s, u)) = rx.try_recv() {
                    services.insert(s, u);
                }
                break;
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok((s, u)) => {
                    services.insert(s, u);
                }
                Err(_) if std::time::Instant::now() < deadline => {}
                Err(_) => {
                    let _ = child.kill();
                    panic!("server did not start: {:?}", log.lock().unwrap());
                }
            }
        }
        let url = services["api"].clone();
        let prefix = prefix.iter().map(|s| s.to_string()).collect();
        Server { child, url, dir: dir.to_owned(), _tmp: None, log, services, prefix }
    }

    /// `host:port` of a listener.
    pub fn addr(&self, service: &str) -> String {
        self.services[service].split("://").nth(1).unwrap().to_owned()
    }

    pub fn files(&self) -> PathBuf {
        self.dir.join("files")
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("tls").join("ca.pem")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        for _ in 0..200 {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("server did not stop on SIGTERM");
    }

    pub fn http(&self) -> reqwest::Client {
        let pem = std::fs::read(self.ca()).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    pub async fn token(&self) -> String {
        self.token_of("admin", PASSWORD).await
    }

    /// A token of `user`, logged in with `password`.
    pub async fn token_of(&self, user: &str, password: &str) -> String {
        let r = self
            .http()
            .post(format!("{}/api/v1/auth/token", self.url))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "login as {user}");
        let v: Value = r.json().await.unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    pub async fn api(&self) -> Api {
        Api { http: self.http(), url: self.url.clone(), token: self.token().await }
    }

    /// The API as `user`.
    pub async fn api_as(&self, user: &str, password: &str) -> Api {
        Api { http: self.http(), url: self.url.clone(), token: self.token_of(user, password).await }
    }

    /// Trades a boot credential (what a boot file's `machine_token()` gives)
    /// for a session token of machine `id`, as the machine's agent does.
    pub async fn session(&self, id: &str, boot_token: &str) -> String {
        let r = self
            .http()
            .post(format!("{}/api/v1/machines/{id}/session", self.url))
            .bearer_auth(boot_token)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "trading the boot credential: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Runs the CLI against this server with a config file in the data dir.
    pub fn cli(&self, args: &[&str], token: Option<&str>) -> Output {
        self.cli_command(args, token).output().unwrap()
    }

    /// The CLI with `args`, as [`Server::cli`] runs it, to start by hand
    /// (a command that runs until stopped, such as `events`).
    pub fn cli_command(&self, args: &[&str], token: Option<&str>) -> Command {
        let mut c = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        c.args(args)
            .env("PLINTH_ENDPOINT", &self.url)
            .env("PLINTH_CA_CERT", self.ca())
            .env("PLINTH_CONFIG", self.dir.join("cli-config.json"))
            .env_remove("PLINTH_TOKEN")
            .stdin(Stdio::null());
        if let Some(t) = token {
            c.env("PLINTH_TOKEN", t);
        }
        c
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Api {
    pub http: reqwest::Client,
    pub url: String,
    pub token: String,
}

pub struct Resp {
    pub status: u16,
    pub etag: Option<String>,
    pub body: Value,
}

impl Api {
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>, if_match: Option<&str>) -> Resp {
        let mut r = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        if let Some(m) = if_match {
            r = r.header("If-Match", m);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let etag = resp.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
        let bytes = resp.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp { status, etag, body }
    }
    pub async fn get(&self, path: &str) -> Resp {
        self.send(reqwest::Method::GET, path, None, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send(reqwest::Method::POST, path, Some(body), None).await
    }

    /// POST that must succeed; the reply's body.
    pub async fn post_ok(&self, path: &str, body: Value) -> Value {
        let r = self.post(path, body).await;
        assert!(r.status < 300, "{path}: {} {}", r.status, r.body);
        r.body
    }
}

/// `plinth-agent join` for one run (`--once`) as a plain process, a machine
/// without PXE, appended to `c` (the agent, or an emulator and the agent):
/// its root, state and work dirs under `root`, trusting `server`'s CA.
pub fn agent_join(mut c: Command, server: &Server, root: &Path, name: &str, token: &str) -> Command {
    c.args(["join", "--endpoint", &server.url, "--name", name, "--boot-id", &format!("{name}-boot"), "--once"])
        .arg("--state-dir")
        .arg(root.join("state"))
        .arg("--root")
        .arg(root)
        .arg("--work-dir")
        .arg(root.join("work"))
        .arg("--ca-cert")
        .arg(server.ca())
        .env("PLINTH_JOIN_TOKEN", token)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    c
}
