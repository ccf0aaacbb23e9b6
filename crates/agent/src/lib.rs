//! `plinth-agent`: runs on a machine (discovery, an installed OS, a cloud
//! VM). It reports the machine's inventory, asks Plinth for its next step
//! (long poll), runs the job's rendered scripts with the job's time limit,
//! streams their output in numbered chunks, and reports how it ended. Every
//! call is retried with backoff; the server makes retries harmless (the same
//! job until it is started, a log chunk stored once, an end reported once).
//!
//! Task contract: scripts run in order as root with `PLINTH_ENDPOINT`,
//! `PLINTH_MACHINE`, `PLINTH_JOB`, `PLINTH_RESULT` and `PLINTH_AGENT` (this
//! program) set; a script may write `{"params": {...}}` to `$PLINTH_RESULT`
//! to set params on its machine, and a line of its output
//! `plinth-progress done=N [total=M] [rate=R] <what>` goes to the machine's
//! timeline as well as the job log (the agent sends one every 5 s at most).
//! Exit 0 is success, 64 success + reboot, 65 success + power off, 66
//! success + pause the workflow; anything else fails the job.
#![forbid(unsafe_code)]

pub mod deploy;
pub mod gpt;
mod inventory;

use clap::{Arg, ArgAction, Command, value_parser};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// How often the agent renews its session token (well inside the server's
/// default token lifetime of 24 h).
const RENEW_EVERY: Duration = Duration::from_secs(3 * 3600);

/// Writes `contents` to `path` through a temporary file, mode 0600.
fn write_private(path: &std::path::Path, contents: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(contents.as_bytes()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

struct Agent {
    http: reqwest::Client,
    endpoint: String,
    token: std::sync::Mutex<String>,
    /// An env file (`PLINTH_TOKEN=...`) to keep the current token in.
    state_file: Option<PathBuf>,
    machine: String,
    boot_id: Option<String>,
    root: PathBuf,
    work: PathBuf,
    reboot_cmd: String,
    poweroff_cmd: String,
    once: bool,
}

/// Writes a task's file at `path` under `root`, never outside it: a path
/// with `..`, or a directory on the way (or the file) that is a link
/// leading out of the root, is refused.
fn confined_write(root: &std::path::Path, path: &str, contents: &str) -> Result<(), String> {
    use std::path::Component;
    let relative = std::path::Path::new(path.trim_start_matches('/'));
    if relative.as_os_str().is_empty()
        || relative.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!("refused to write `{}`: it would leave {}", path.escape_debug(), root.display()));
    }
    let target = root.join(relative);
    let canonical_root = root.canonicalize().map_err(|e| format!("{}: {e}", root.display()))?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
        let real = parent.canonicalize().map_err(|e| format!("{}: {e}", parent.display()))?;
        if !real.starts_with(&canonical_root) {
            return Err(format!("refused to write `{}`: a link leads out of {}", path.escape_debug(), root.display()));
        }
    }
    if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(format!("refused to write `{}`: it is a link", path.escape_debug()));
    }
    std::fs::write(&target, contents).map_err(|e| format!("cannot write {}: {e}", target.display()))
}

fn log(msg: &str) {
    eprintln!("plinth-agent: {msg}");
}

impl Agent {
    /// One API call, retried with backoff until it gets an answer that is
    /// not a connection error or a 5xx; 4xx answers are returned.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let mut backoff = Duration::from_millis(500);
        loop {
            let token = self.token.lock().map(|t| t.clone()).unwrap_or_default();
            let mut req = self.http.request(method.clone(), format!("{}{path}", self.endpoint)).bearer_auth(token);
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_server_error() => {
                    log(&format!("{path}: server answered {}", resp.status()))
                }
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        return Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)));
                    }
                    return Err(format!("{path}: {status}: {text}"));
                }
                Err(e) => log(&format!("{path}: {e}; retrying in {backoff:?}")),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Trades the current token for a fresh session token and keeps it
    /// (in memory, and in the state file when there is one).
    async fn renew(&self) -> Result<(), String> {
        let path = format!("/api/v1/machines/{}/session", self.machine);
        let reply = self.call(reqwest::Method::POST, &path, Some(&json!({}))).await?;
        let token = reply["token"].as_str().ok_or("the session answer has no token")?.to_owned();
        if let Some(file) = &self.state_file {
            let old = std::fs::read_to_string(file).unwrap_or_default();
            let mut lines: Vec<String> =
                old.lines().filter(|l| !l.starts_with("PLINTH_TOKEN=")).map(str::to_owned).collect();
            lines.push(format!("PLINTH_TOKEN={token}"));
            write_private(file, &format!("{}\n", lines.join("\n")))?;
        }
        if let Ok(mut t) = self.token.lock() {
            *t = token;
        }
        log(&format!("session renewed (until {})", reply["expires_at"].as_str().unwrap_or("?")));
        Ok(())
    }

    async fn run(&self) -> Result<(), String> {
        // The token a boot file carried is short-lived: trade it for a session.
        self.renew().await?;
        let mut renewed = tokio::time::Instant::now();
        let inv = inventory::collect(std::path::Path::new("/"));
        self.call(reqwest::Method::POST, &format!("/api/v1/machines/{}/inventory", self.machine), Some(&inv)).await?;
        log("inventory reported");
        loop {
            if renewed.elapsed() > RENEW_EVERY {
                self.renew().await?;
                renewed = tokio::time::Instant::now();
            }
            let body = json!({"boot_id": self.boot_id, "wait_secs": if self.once { 0 } else { 30 }});
            let next = self
                .call(reqwest::Method::POST, &format!("/api/v1/machines/{}/next", self.machine), Some(&body))
                .await?;
            match next["action"].as_str() {
                Some("run") => {
                    let code = self.run_job(&next["job"]).await?;
                    match code {
                        64 => self.power(&self.reboot_cmd).await,
                        65 => self.power(&self.poweroff_cmd).await,
                        _ => {}
                    }
                }
                Some("reboot") => self.power(&self.reboot_cmd).await,
                Some("wait") => {
                    let state = next["state"].as_str().unwrap_or_default();
                    if self.once && matches!(state, "idle" | "complete" | "failed" | "paused") {
                        log(&format!("nothing to do (workflow {state})"));
                        return Ok(());
                    }
                    if self.once {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                _ => return Err(format!("unexpected answer: {next}")),
            }
        }
    }

    async fn power(&self, cmd: &str) {
        log(&format!("running `{cmd}`"));
        let _ = tokio::process::Command::new("/bin/sh").arg("-c").arg(cmd).status().await;
        // A real reboot ends this process; a test command returns.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Runs one job; returns its exit code.
    async fn run_job(&self, job: &Value) -> Result<i32, String> {
        let id = job["id"].as_str().ok_or("a job without id")?.to_owned();
        let timeout = Duration::from_secs(job["timeout_secs"].as_u64().unwrap_or(3600));
        log(&format!("job {id}: task {}", job["task"]));
        let files = self.call(reqwest::Method::GET, &format!("/api/v1/jobs/{id}/files"), None).await;
        self.call(reqwest::Method::POST, &format!("/api/v1/jobs/{id}/start"), Some(&json!({}))).await?;
        let files = match files {
            Ok(f) => f,
            Err(e) => return self.finish(&id, 1, &format!("cannot render the task: {e}"), json!({})).await,
        };
        let dir = self.work.join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let result = dir.join("result.json");
        let mut seq = 0u64;
        let started = tokio::time::Instant::now();
        let mut code = 0;
        let mut reason = String::new();
        for f in files.as_array().cloned().unwrap_or_default() {
            let contents = f["contents"].as_str().unwrap_or_default();
            if let Some(path) = f["path"].as_str() {
                if let Err(e) = confined_write(&self.root, path, contents) {
                    (code, reason) = (1, e);
                    break;
                }
                continue;
            }
            let name = f["name"].as_str().unwrap_or("script").replace(['/', '\0'], "_");
            let script = dir.join(format!("{name}.sh"));
            std::fs::write(&script, contents).map_err(|e| format!("{}: {e}", script.display()))?;
            let Some(left) = timeout.checked_sub(started.elapsed()) else {
                (code, reason) = (124, format!("timed out after {} s", timeout.as_secs()));
                break;
            };
            let (c, r) = self.run_script(&id, &script, &result, left, &mut seq).await;
            if c != 0 {
                // The limit is the job's, whatever was left of it for this script.
                let r = if c == 124 && r.starts_with("timed out") {
                    format!("timed out after {} s", timeout.as_secs())
                } else {
                    r
                };
                (code, reason) = (c, r);
                break;
            }
        }
        let params = std::fs::read_to_string(&result)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v.get("params").cloned())
            .unwrap_or(json!({}));
        let _ = std::fs::remove_dir_all(&dir);
        self.finish(&id, code, &reason, params).await
    }

    async fn finish(&self, id: &str, code: i32, reason: &str, params: Value) -> Result<i32, String> {
        let body = json!({"exit_code": code, "reason": reason, "params": params});
        match self.call(reqwest::Method::POST, &format!("/api/v1/jobs/{id}/finish"), Some(&body)).await {
            Ok(_) => {}
            Err(e) if code == 0 => {
                // The params were refused: report the job as failed, saying why.
                let body = json!({"exit_code": 1, "reason": format!("the result was refused: {e}")});
                self.call(reqwest::Method::POST, &format!("/api/v1/jobs/{id}/finish"), Some(&body)).await?;
                return Ok(1);
            }
            Err(e) => return Err(e),
        }
        log(&format!("job {id}: exit {code} {reason}"));
        Ok(code)
    }

    /// Runs a script, sending its output as it comes; returns (exit code, reason).
    async fn run_script(
        &self,
        job: &str,
        script: &std::path::Path,
        result: &std::path::Path,
        limit: Duration,
        seq: &mut u64,
    ) -> (i32, String) {
        let child = tokio::process::Command::new("/bin/sh")
            .arg(script)
            .env("PLINTH_ENDPOINT", &self.endpoint)
            .env("PLINTH_MACHINE", &self.machine)
            .env("PLINTH_JOB", job)
            .env("PLINTH_RESULT", result)
            .env("PLINTH_AGENT", std::env::current_exe().unwrap_or_else(|_| "plinth-agent".into()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => return (127, format!("cannot start the script: {e}")),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        for mut pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let deadline = tokio::time::Instant::now() + limit;
        let mut pending: Vec<u8> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut open = true;
        let mut lines = ProgressLines::default();
        let status = loop {
            tokio::select! {
                chunk = rx.recv(), if open => match chunk {
                    Some(c) => {
                        if let Some(report) = lines.feed(&c) {
                            self.send_progress(job, &report).await;
                        }
                        pending.extend(c);
                        if pending.len() >= 64 * 1024 {
                            self.send_log(job, seq, &mut pending).await;
                        }
                    }
                    None => open = false,
                },
                _ = tick.tick() => self.send_log(job, seq, &mut pending).await,
                s = child.wait(), if !open => break s.map(|s| s.code().unwrap_or(128)).unwrap_or(127),
                _ = tokio::time::sleep_until(deadline) => {
                    // The whole process group the script leads (it was started
                    // in its own): the script and what it started, nothing else.
                    if let Some(pgid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
                    }
                    let _ = child.kill().await;
                    while let Ok(Some(c)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                        pending.extend(c);
                    }
                    pending.extend(b"\nplinth-agent: the job reached its time limit; killed\n".to_vec());
                    self.send_log(job, seq, &mut pending).await;
                    return (124, format!("timed out after {} s", limit.as_secs()));
                }
            }
        };
        self.send_log(job, seq, &mut pending).await;
        let reason = if status == 0 { String::new() } else { format!("{} exited {status}", script.display()) };
        (status, reason)
    }

    /// A job's progress, for the machine's timeline; a refusal only logged.
    async fn send_progress(&self, job: &str, report: &Value) {
        if let Err(e) = self.call(reqwest::Method::POST, &format!("/api/v1/jobs/{job}/progress"), Some(report)).await {
            log(&format!("progress refused: {e}"));
        }
    }

    async fn send_log(&self, job: &str, seq: &mut u64, pending: &mut Vec<u8>) {
        if pending.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(pending).into_owned();
        let body = json!({"seq": *seq, "text": text});
        if let Err(e) = self.call(reqwest::Method::POST, &format!("/api/v1/jobs/{job}/log"), Some(&body)).await {
            log(&format!("log chunk refused: {e}"));
        }
        *seq += 1;
        pending.clear();
    }
}

/// Finds `plinth-progress` lines in a job's output, across chunks, and
/// lets one through every [`PROGRESS_EVERY`] at most (the newest wins).
#[derive(Default)]
struct ProgressLines {
    partial: Vec<u8>,
    last: Option<std::time::Instant>,
}

/// The least time between two progress reports of one job.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl ProgressLines {
    fn feed(&mut self, chunk: &[u8]) -> Option<Value> {
        self.partial.extend_from_slice(chunk);
        let mut newest = None;
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            if let Some(report) = parse_progress(&String::from_utf8_lossy(&line)) {
                newest = Some(report);
            }
        }
        if self.partial.len() > 4096 {
            self.partial.clear();
        }
        let due = self.last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
        let report = newest.filter(|_| due)?;
        self.last = Some(std::time::Instant::now());
        Some(report)
    }
}

/// `plinth-progress done=N [total=M] [rate=R] <what>` as the body of
/// `POST /jobs/{id}/progress`.
fn parse_progress(line: &str) -> Option<Value> {
    let rest = line.trim().strip_prefix("plinth-progress ")?;
    let mut report = json!({"done": 0});
    let mut what = Vec::new();
    let mut done = false;
    for word in rest.split_whitespace() {
        match word.split_once('=') {
            Some((k @ ("done" | "total" | "rate"), v)) if what.is_empty() => {
                report[k] = json!(v.parse::<u64>().ok()?);
                done |= k == "done";
            }
            _ => what.push(word),
        }
    }
    let what: String = what.join(" ").chars().filter(|c| !c.is_control()).take(200).collect();
    report["what"] = json!(what);
    done.then_some(report)
}

/// Registers this machine with a join token: its MACs, DMI UUID and serial
/// and inventory go to `whoami`; the machine token that comes back is kept
/// in `<state_dir>/agent.env` (mode 0600), so a restarted agent can use
/// `run` with it. Returns (machine token, machine id).
async fn join(
    http: &reqwest::Client,
    endpoint: &str,
    join_token: &str,
    name: Option<&String>,
    state_dir: &std::path::Path,
) -> Result<(String, String), String> {
    let inv = inventory::collect(std::path::Path::new("/"));
    let macs: Vec<Value> = inv["nics"].as_array().into_iter().flatten().map(|n| n["mac"].clone()).collect();
    let body = json!({"name": name, "macs": macs, "system_uuid": inv["system"]["uuid"], "serial": inv["system"]["serial"],
        "inventory": inv});
    let mut backoff = Duration::from_millis(500);
    let reply = loop {
        match http.post(format!("{endpoint}/api/v1/machines/whoami")).bearer_auth(join_token).json(&body).send().await {
            Ok(r) if r.status().is_server_error() => log(&format!("whoami: server answered {}", r.status())),
            Ok(r) => {
                let status = r.status();
                let v: Value = r.json().await.unwrap_or_default();
                if !status.is_success() {
                    return Err(format!("whoami: {status}: {}", v["detail"].as_str().unwrap_or_default()));
                }
                break v;
            }
            Err(e) => log(&format!("whoami: {e}; retrying in {backoff:?}")),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    };
    let token = reply["token"].as_str().ok_or("whoami sent no token")?.to_owned();
    let id = reply["machine"]["id"].as_str().ok_or("whoami sent no machine")?.to_owned();
    log(&format!(
        "joined as {} ({id}), {}",
        reply["machine"]["name"].as_str().unwrap_or("?"),
        if reply["created"] == true { "a new machine" } else { "an existing machine" }
    ));
    std::fs::create_dir_all(state_dir).map_err(|e| format!("{}: {e}", state_dir.display()))?;
    let env = format!("PLINTH_ENDPOINT={endpoint}\nPLINTH_MACHINE={id}\nPLINTH_TOKEN={token}\n");
    write_private(&state_dir.join("agent.env"), &env)?;
    Ok((token, id))
}

/// The arguments `run` and `join` share: where the API is, how to trust it,
/// and how jobs run on this machine.
fn job_args(cmd: Command) -> Command {
    cmd.arg(
        Arg::new("endpoint")
            .long("endpoint")
            .env("PLINTH_ENDPOINT")
            .required(true)
            .help("API base URL, e.g. https://10.0.0.1:8092"),
    )
    .arg(
        Arg::new("allow-http")
            .long("allow-http")
            .env("PLINTH_ALLOW_HTTP")
            .action(ArgAction::SetTrue)
            .help("Send the token to a plain http:// endpoint (in the clear; for a local test only)"),
    )
    .arg(
        Arg::new("ca-cert")
            .long("ca-cert")
            .env("PLINTH_CA_CERT")
            .value_parser(value_parser!(PathBuf))
            .help("PEM file of the CA that signed the server's certificate"),
    )
    .arg(Arg::new("boot-id").long("boot-id").help("This boot's id [default: /proc/sys/kernel/random/boot_id]"))
    .arg(
        Arg::new("root")
            .long("root")
            .default_value("/")
            .value_parser(value_parser!(PathBuf))
            .help("Where task files are written (their paths are under it)"),
    )
    .arg(
        Arg::new("work-dir")
            .long("work-dir")
            .default_value("/var/lib/plinth-agent")
            .value_parser(value_parser!(PathBuf)),
    )
    .arg(Arg::new("reboot-command").long("reboot-command").default_value("reboot"))
    .arg(Arg::new("poweroff-command").long("poweroff-command").default_value("poweroff"))
    .arg(
        Arg::new("once")
            .long("once")
            .action(ArgAction::SetTrue)
            .help("Exit when there is nothing to do instead of waiting"),
    )
}

fn command() -> Command {
    let run = job_args(Command::new("run").about("Report the inventory, then run the jobs Plinth hands out"))
        .arg(
            Arg::new("token")
                .long("token")
                .env("PLINTH_TOKEN")
                .required(true)
                .hide_env_values(true)
                .help("Machine token"),
        )
        .arg(Arg::new("machine").long("machine").env("PLINTH_MACHINE").required(true).help("This machine's id"))
        .arg(Arg::new("state-file").long("state-file").value_parser(value_parser!(PathBuf)).help(
            "Env file whose PLINTH_TOKEN line is kept current as the session is renewed (/etc/plinth/agent.env)",
        ));
    let join = job_args(
        Command::new("join")
            .about("Register this machine with a join token (a cloud VM, an existing server), then run its jobs"),
    )
    .arg(
        Arg::new("token")
            .long("token")
            .env("PLINTH_JOIN_TOKEN")
            .required(true)
            .hide_env_values(true)
            .help("Join token"),
    )
    .arg(Arg::new("name").long("name").help("Name for a new Machine [default: from the first MAC]"))
    .arg(
        Arg::new("state-dir")
            .long("state-dir")
            .default_value("/etc/plinth")
            .value_parser(value_parser!(PathBuf))
            .help("Where the machine token is kept (agent.env, mode 0600)"),
    );
    Command::new("plinth-agent")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Plinth's agent: runs a machine's workflow jobs")
        .subcommand_required(true)
        .subcommand(run)
        .subcommand(join)
        .subcommand(Command::new("inventory").about("Print this machine's inventory as JSON"))
        .subcommand(deploy_command())
}

/// `deploy-image`: what the built-in image-deploy task runs.
fn deploy_command() -> Command {
    let bytes = || value_parser!(u64);
    Command::new("deploy-image")
        .about("Stream a disk image onto this machine's disk, verify its SHA-256, leave its cloud-init seed")
        .arg(Arg::new("url").long("url").required(true).help("Where the image is (http or https)"))
        .arg(Arg::new("sha256").long("sha256").required(true).help("SHA-256 of the file as served"))
        .arg(
            Arg::new("format")
                .long("format")
                .default_value("raw")
                .help("raw, raw.gz, raw.xz, raw.zst (qcow2 is refused)"),
        )
        .arg(Arg::new("size").long("size").value_parser(bytes()).help("Bytes of the file as served"))
        .arg(Arg::new("raw-size").long("raw-size").value_parser(bytes()).help("Bytes once decoded"))
        .arg(Arg::new("disk").long("disk").help("The target: a device or /dev/disk/by-path|by-id link"))
        .arg(Arg::new("disk-serial").long("disk-serial").help("The target's serial number"))
        .arg(Arg::new("disk-min-size").long("disk-min-size").value_parser(bytes()))
        .arg(Arg::new("disk-max-size").long("disk-max-size").value_parser(bytes()))
        .arg(Arg::new("disk-pick").long("disk-pick").help("smallest, largest or first, when several disks are left"))
        .arg(
            Arg::new("seed-url")
                .long("seed-url")
                .env("PLINTH_SEED_URL")
                .hide_env_values(true)
                .help("NoCloud seed URL left on the image's root file system"),
        )
        .arg(Arg::new("efi-loader").long("efi-loader").help("Loader the UEFI boot entry names"))
        .arg(Arg::new("efi-label").long("efi-label").default_value("Plinth image"))
        .arg(Arg::new("attempts").long("attempts").default_value("8").value_parser(value_parser!(u32).range(1..=100)))
        .arg(Arg::new("sysfs").long("sysfs").default_value("/sys").value_parser(value_parser!(PathBuf)).hide(true))
        .arg(Arg::new("dev").long("dev").default_value("/dev").value_parser(value_parser!(PathBuf)).hide(true))
}

/// Runs `deploy-image`.
async fn deploy_image(m: &clap::ArgMatches) -> ExitCode {
    let s = |n: &str| m.get_one::<String>(n).cloned();
    let n = |n: &str| m.get_one::<u64>(n).copied();
    let sysfs = m.get_one::<PathBuf>("sysfs").cloned().unwrap_or_default();
    let efivars = sysfs.join("firmware/efi/efivars");
    // efivarfs where the firmware is UEFI and nobody mounted it yet.
    if sysfs.join("firmware/efi").is_dir() && std::fs::read_dir(&efivars).is_ok_and(|mut d| d.next().is_none()) {
        let _ = std::process::Command::new("mount").args(["-t", "efivarfs", "efivarfs"]).arg(&efivars).status();
    }
    let options = deploy::Options {
        url: s("url").unwrap_or_default(),
        sha256: s("sha256").unwrap_or_default(),
        format: s("format").unwrap_or_default(),
        size: n("size"),
        raw_size: n("raw-size"),
        disk: deploy::DiskRule {
            path: s("disk").filter(|d| !d.is_empty()),
            serial: s("disk-serial").filter(|d| !d.is_empty()),
            min_size: n("disk-min-size"),
            max_size: n("disk-max-size"),
            pick: s("disk-pick").filter(|d| !d.is_empty()),
        },
        sysfs,
        dev: m.get_one::<PathBuf>("dev").cloned().unwrap_or_default(),
        seed_url: s("seed-url").filter(|d| !d.is_empty()),
        efi_loader: s("efi-loader").filter(|d| !d.is_empty()),
        efi_label: s("efi-label").unwrap_or_default(),
        efivars,
        attempts: m.get_one::<u32>("attempts").copied().unwrap_or(8),
        progress_every: PROGRESS_EVERY,
    };
    match deploy::deploy(&options).await {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("image deploy failed: {e}");
            log(&format!("image deploy failed: {e}"));
            ExitCode::from(1)
        }
    }
}

/// The agent's `main`: parses the command line and runs.
pub fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            log(&format!("cannot start: {e}"));
            return ExitCode::from(1);
        }
    };
    runtime.block_on(main_async())
}

async fn main_async() -> ExitCode {
    let m = command().get_matches();
    match m.subcommand() {
        Some(("inventory", _)) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&inventory::collect(std::path::Path::new("/"))).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Some(("deploy-image", m)) => deploy_image(m).await,
        Some((sub @ ("run" | "join"), m)) => {
            let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(90));
            if let Some(ca) = m.get_one::<PathBuf>("ca-cert") {
                match std::fs::read(ca)
                    .map_err(|e| e.to_string())
                    .and_then(|p| reqwest::Certificate::from_pem(&p).map_err(|e| e.to_string()))
                {
                    Ok(c) => builder = builder.add_root_certificate(c),
                    Err(e) => {
                        log(&format!("cannot use {}: {e}", ca.display()));
                        return ExitCode::from(2);
                    }
                }
            }
            let http = match builder.build() {
                Ok(h) => h,
                Err(e) => {
                    // reqwest says only "builder error"; the cause (a CA
                    // file that is not a certificate, say) is in the chain.
                    let mut why = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        why.push_str(&format!(": {s}"));
                        source = s.source();
                    }
                    log(&format!("cannot set up the HTTPS client: {why}"));
                    return ExitCode::from(1);
                }
            };
            let arg = |n: &str| m.get_one::<String>(n).cloned().unwrap_or_default();
            let endpoint = arg("endpoint").trim_end_matches('/').to_owned();
            let plain_allowed = endpoint.starts_with("http://") && m.get_flag("allow-http");
            if !(endpoint.starts_with("https://") || plain_allowed) {
                log(&format!(
                    "refusing endpoint `{endpoint}`: the token would cross the network in the clear; \
                     use https:// (or --allow-http for a local test)"
                ));
                return ExitCode::from(2);
            }
            let (token, machine) = if sub == "join" {
                let state_dir = m.get_one::<PathBuf>("state-dir").cloned().unwrap_or_default();
                match join(&http, &endpoint, &arg("token"), m.get_one::<String>("name"), &state_dir).await {
                    Ok(t) => t,
                    Err(e) => {
                        log(&e);
                        return ExitCode::from(1);
                    }
                }
            } else {
                (arg("token"), arg("machine"))
            };
            let state_file = match sub {
                "join" => m.get_one::<PathBuf>("state-dir").map(|d| d.join("agent.env")),
                _ => m.get_one::<PathBuf>("state-file").cloned(),
            };
            let agent = Agent {
                http,
                endpoint,
                token: std::sync::Mutex::new(token),
                state_file,
                machine,
                boot_id: m.get_one::<String>("boot-id").cloned().or_else(|| {
                    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_owned())
                }),
                root: m.get_one::<PathBuf>("root").cloned().unwrap_or_else(|| PathBuf::from("/")),
                work: m.get_one::<PathBuf>("work-dir").cloned().unwrap_or_default(),
                reboot_cmd: arg("reboot-command"),
                poweroff_cmd: arg("poweroff-command"),
                once: m.get_flag("once"),
            };
            match agent.run().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log(&e);
                    ExitCode::from(1)
                }
            }
        }
        _ => ExitCode::from(2),
    }
}

#[cfg(test)]
mod tests {
    use super::confined_write;

    #[test]
    fn task_files_stay_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        confined_write(root.path(), "/etc/plinth/x.conf", "ok").unwrap();
        assert_eq!(std::fs::read_to_string(root.path().join("etc/plinth/x.conf")).unwrap(), "ok");
        for bad in ["../escape", "/etc/../../escape", "a/../../../escape", ""] {
            assert!(confined_write(root.path(), bad, "no").is_err(), "{bad}");
        }
        // A directory on the way that links out of the root.
        std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
        let e = confined_write(root.path(), "/out/planted", "no").unwrap_err();
        assert!(e.contains("link"), "{e}");
        // The file itself a link.
        std::os::unix::fs::symlink(outside.path().join("target"), root.path().join("etc/link")).unwrap();
        assert!(confined_write(root.path(), "/etc/link", "no").is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing written outside");
    }
}
