//! `plinth lab`: rehearse on VMs on the operator's own machine. `up`
//! creates a private network namespace with a bridge, runs a Plinth server
//! on that bridge (DHCP, TFTP, HTTP and the API, on the bridge only) and N
//! QEMU guests (BIOS, UEFI or both) attached to it; `down` stops what `up`
//! started (by the PIDs it recorded) and deletes the namespace with
//! everything in it. Nothing touches the machine's own interfaces. The
//! VM tests build their namespaces and QEMU command lines with this code.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why a lab step failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LabError(pub String);

fn err(msg: impl Into<String>) -> LabError {
    LabError(msg.into())
}

fn run(args: &[&str]) -> Result<(), LabError> {
    let o = Command::new(args[0]).args(&args[1..]).output().map_err(|e| err(format!("{}: {e}", args[0])))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim())))
    }
}

/// A network namespace (not deleted on drop: see [`Namespace::delete`]).
#[derive(Debug, Clone)]
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    /// Creates namespace `name` with its loopback up.
    pub fn create(name: &str) -> Result<Namespace, LabError> {
        run(&["ip", "netns", "add", name])?;
        let ns = Namespace { name: name.to_owned() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Result<(), LabError> {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// A command run inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Adds bridge `bridge` with address `cidr` (e.g. `10.123.0.1/24`), up.
    pub fn add_bridge(&self, bridge: &str, cidr: &str) -> Result<(), LabError> {
        self.ip(&["link", "add", bridge, "type", "bridge"])?;
        self.ip(&["addr", "add", cidr, "dev", bridge])?;
        self.ip(&["link", "set", bridge, "up"])
    }

    /// Adds tap `tap` on `bridge`, up (a QEMU guest's NIC plugs in here).
    pub fn add_tap(&self, tap: &str, bridge: &str) -> Result<(), LabError> {
        self.ip(&["tuntap", "add", tap, "mode", "tap"])?;
        self.ip(&["link", "set", tap, "master", bridge])?;
        self.ip(&["link", "set", tap, "up"])
    }

    /// Deletes the namespace and every link in it.
    pub fn delete(&self) -> Result<(), LabError> {
        run(&["ip", "netns", "del", &self.name])
    }

    /// Whether a namespace of this name exists.
    pub fn exists(name: &str) -> bool {
        Command::new("ip").args(["netns", "list"]).output().is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).lines().any(|l| l.split_whitespace().next() == Some(name))
        })
    }
}

/// One guest.
#[derive(Debug, Clone)]
pub struct Vm {
    pub mac: String,
    /// UEFI (OVMF, virtio-net without option ROM: the firmware's own PXE)
    /// or BIOS (SeaBIOS, e1000 with QEMU's iPXE ROM).
    pub uefi: bool,
    pub memory_mib: u32,
    /// A raw disk image attached as virtio, if any.
    pub disk: Option<PathBuf>,
    /// Whether the guest may reboot (else it exits instead).
    pub reboot: bool,
    /// Boot order disk, then network, as most sites set it: a blank disk
    /// falls through to PXE, an installed one boots. Else network first.
    pub disk_first: bool,
}

/// The firmware image UEFI guests boot.
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// What a guest needs on this machine: root and iproute2 for namespaces,
/// QEMU, QEMU's iPXE ROMs, and OVMF for UEFI.
pub fn preflight(uefi: bool) -> Result<(), LabError> {
    let root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")));
    if !root {
        return Err(err("the lab creates a network namespace: run it as root"));
    }
    let have = |tool: &str| {
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
    };
    for tool in ["ip", "qemu-system-x86_64"] {
        if !have(tool) {
            return Err(err(format!("`{tool}` is missing (Debian: iproute2, qemu-system-x86)")));
        }
    }
    if !Path::new("/usr/lib/ipxe/undionly.kpxe").exists() {
        return Err(err("iPXE loaders are missing (Debian: ipxe, ipxe-qemu)"));
    }
    if uefi && !Path::new(OVMF).exists() {
        return Err(err(format!("{OVMF} is missing (Debian: ovmf)")));
    }
    Ok(())
}

/// The QEMU command line for `vm` on `tap` inside `ns` (TCG, serial console
/// on stdout), bounded by `timeout_secs` when given.
pub fn qemu(ns: &Namespace, vm: &Vm, tap: &str, timeout_secs: Option<u64>) -> Command {
    let mut args: Vec<String> = Vec::new();
    if let Some(t) = timeout_secs {
        args.extend(["timeout".into(), t.to_string()]);
    }
    args.extend(
        ["qemu-system-x86_64", "-accel", "tcg", "-m", &vm.memory_mib.to_string(), "-nographic"].map(str::to_owned),
    );
    let disk_first = vm.disk_first && vm.disk.is_some();
    // The firmware's order comes from `bootindex` (both SeaBIOS and OVMF
    // read it); `-boot n` alone does not stop OVMF booting a disk.
    let nic_index = if disk_first { ",bootindex=2" } else { ",bootindex=1" };
    if !vm.reboot {
        args.push("-no-reboot".into());
    }
    args.extend(["-netdev".into(), format!("tap,id=n0,ifname={tap},script=no,downscript=no")]);
    if vm.uefi {
        args.extend([
            "-bios".into(),
            OVMF.into(),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={},romfile={nic_index}", vm.mac),
        ]);
    } else {
        args.extend(["-device".into(), format!("e1000,netdev=n0,mac={}{nic_index}", vm.mac)]);
    }
    if let Some(disk) = &vm.disk {
        args.extend([
            "-drive".into(),
            format!("file={},format=raw,if=none,id=d0", disk.display()),
            "-device".into(),
            format!("virtio-blk-pci,drive=d0{}", if disk_first { ",bootindex=1" } else { "" }),
        ]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ns.exec(&refs)
}

/// What `plinth lab up` builds.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the lab keeps its server's data dir, VM disks, logs and state.
    pub dir: PathBuf,
    /// The namespace's name.
    pub name: String,
    pub machines: usize,
    /// `bios`, `uefi` or `mixed` (alternating).
    pub firmware: String,
    pub memory_mib: u32,
    pub disk_gib: u64,
    /// The lab network's first three octets; the server is `.1`, DHCP hands
    /// out `.100`–`.199`.
    pub net: String,
}

const STATE: &str = "lab.json";
const BRIDGE: &str = "labbr0";

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), LabError> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            return Err(err(format!("timed out waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Builds the lab; returns a summary for the operator. On any failure what
/// was started is stopped and the namespace deleted.
pub fn up(o: &Options) -> Result<String, LabError> {
    let uefi = o.firmware != "bios";
    preflight(uefi)?;
    if !matches!(o.firmware.as_str(), "bios" | "uefi" | "mixed") {
        return Err(err("--firmware is bios, uefi or mixed"));
    }
    if o.machines == 0 || o.machines > 32 {
        return Err(err("--machines is 1 to 32"));
    }
    let octets: Vec<u8> = o.net.split('.').filter_map(|p| p.parse().ok()).collect();
    if octets.len() != 3 || o.net.split('.').count() != 3 {
        return Err(err("--net is three octets, e.g. 10.123.0"));
    }
    if o.dir.join(STATE).exists() {
        return Err(err(format!("a lab is already up in {} (plinth lab down --dir {0})", o.dir.display())));
    }
    if Namespace::exists(&o.name) {
        return Err(err(format!("namespace `{}` already exists; choose another --name or remove it", o.name)));
    }
    std::fs::create_dir_all(&o.dir).map_err(|e| err(format!("cannot create {}: {e}", o.dir.display())))?;
    let ns = Namespace::create(&o.name)?;
    let mut state = json!({"namespace": o.name, "pids": [], "machines": []});
    match build(o, &ns, &mut state) {
        Ok(summary) => Ok(summary),
        Err(e) => {
            stop_pids(&state);
            let _ = ns.delete();
            let _ = std::fs::remove_file(o.dir.join(STATE));
            Err(e)
        }
    }
}

fn push(state: &mut Value, list: &str, item: Value) {
    if let Some(a) = state[list].as_array_mut() {
        a.push(item);
    }
}

fn save(dir: &Path, state: &Value) -> Result<(), LabError> {
    std::fs::write(dir.join(STATE), serde_json::to_vec_pretty(state).unwrap_or_default())
        .map_err(|e| err(format!("cannot write {}: {e}", dir.join(STATE).display())))
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Result<u32, LabError> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).map_err(|e| err(format!("cannot create {}: {e}", log.display())))?;
    let errf = out.try_clone().map_err(|e| err(e.to_string()))?;
    // Its own process group: a Ctrl-C in the operator's shell does not reach it.
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(errf)
        .process_group(0)
        .spawn()
        .map_err(|e| err(format!("cannot start {cmd:?}: {e}")))?;
    Ok(child.id())
}

fn build(o: &Options, ns: &Namespace, state: &mut Value) -> Result<String, LabError> {
    let server_ip = format!("{}.1", o.net);
    ns.add_bridge(BRIDGE, &format!("{server_ip}/24"))?;
    let exe = std::env::current_exe().map_err(|e| err(e.to_string()))?;
    let exe_s = exe.to_string_lossy().into_owned();
    let data = o.dir.join("data");
    // A random admin password, kept in the lab's folder for its CLI. A lab
    // brought up again on its kept folder keeps its store, whose admin has
    // the password written the first time: that one is used again.
    let pw_file = o.dir.join("admin-password");
    let kept = std::fs::read_to_string(&pw_file)
        .ok()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty() && data.join("plinth.db").exists());
    let password = match kept {
        Some(p) => p,
        None => {
            let password: String = plinth_secrets::fresh_key()
                .map_err(|e| err(e.to_string()))?
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            plinth_secrets::write_private(&pw_file, &format!("{password}\n"))
                .map_err(|e| err(format!("cannot write {}: {e}", pw_file.display())))?;
            password
        }
    };

    // The server, on the bridge only.
    let mut server = ns.exec(&[
        &exe_s,
        "serve",
        "--api-addr",
        &format!("{server_ip}:8092"),
        "--http-addr",
        &format!("{server_ip}:8091"),
        "--tftp-addr",
        &format!("{server_ip}:69"),
    ]);
    server.arg("--data-dir").arg(&data).env("PLINTH_ADMIN_PASSWORD", &password);
    let server_log = o.dir.join("server.log");
    let pid = spawn_logged(server, &server_log)?;
    push(state, "pids", json!(pid));
    state["server_pid"] = json!(pid);
    save(&o.dir, state)?;
    wait_for("the server to listen", Duration::from_secs(60), || {
        std::fs::read_to_string(&server_log)
            .is_ok_and(|l| l.contains("service=\"api\"") || l.contains("\"service\":\"api\""))
    })?;

    // The CLI, in the namespace, logged in as admin.
    let cli = |args: &[&str]| -> Result<String, LabError> {
        let mut full = vec![exe_s.as_str()];
        full.extend_from_slice(args);
        let out = ns
            .exec(&full)
            .env("PLINTH_ENDPOINT", format!("https://{server_ip}:8092"))
            .env("PLINTH_CA_CERT", data.join("tls/ca.pem"))
            .env("PLINTH_CONFIG", o.dir.join("cli-config.json"))
            .env_remove("PLINTH_TOKEN")
            .output()
            .map_err(|e| err(e.to_string()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(err(format!("plinth {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
        }
    };
    cli(&["login", "--password-file", &pw_file.to_string_lossy()])?;
    let subnet = json!({"name": "lab", "cidr": format!("{}.0/24", o.net), "interface": BRIDGE,
        "range_start": format!("{}.100", o.net), "range_end": format!("{}.199", o.net), "router": server_ip,
        "lease_secs": 3600, "description": "the plinth lab bridge"});
    // Again on a kept folder, the lab's subnet is already there: it is
    // replaced with this one (the bridge's network may have changed).
    if cli(&["subnets", "show", "lab"]).is_ok() {
        cli(&["subnets", "update", "lab", "--data", &subnet.to_string()])?;
    } else {
        cli(&["subnets", "create", "--data", &subnet.to_string()])?;
    }
    let files = data.join("files");
    let installed = Command::new(&exe)
        .args(["bootloaders", "install", "--file-root"])
        .arg(&files)
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !installed.status.success() {
        return Err(err(format!("bootloaders install: {}", String::from_utf8_lossy(&installed.stderr).trim())));
    }

    // The guests.
    let mut lines = Vec::new();
    for i in 0..o.machines {
        let uefi = match o.firmware.as_str() {
            "uefi" => true,
            "mixed" => i % 2 == 1,
            _ => false,
        };
        let tap = format!("labtap{i}");
        ns.add_tap(&tap, BRIDGE)?;
        let disk = o.dir.join(format!("vm{i}.img"));
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(o.disk_gib << 30))
            .map_err(|e| err(format!("cannot create {}: {e}", disk.display())))?;
        let mac = format!("52:54:00:1a:b0:{i:02x}");
        let vm =
            Vm { mac: mac.clone(), uefi, memory_mib: o.memory_mib, disk: Some(disk), reboot: true, disk_first: true };
        let log = o.dir.join(format!("vm{i}.log"));
        let pid = spawn_logged(qemu(ns, &vm, &tap, None), &log)?;
        push(state, "pids", json!(pid));
        push(state, "machines", json!({"mac": mac, "uefi": uefi, "pid": pid, "console": log}));
        save(&o.dir, state)?;
        lines.push(format!("  {mac}  {}  console {}", if uefi { "uefi" } else { "bios" }, log.display()));
    }
    Ok(format!(
        "lab `{}` is up: server {server_ip} (API https://{server_ip}:8092, log {}), {} machine{}:\n{}\n\
         Use the CLI inside it:  ip netns exec {} env PLINTH_ENDPOINT=https://{server_ip}:8092 PLINTH_CA_CERT={} PLINTH_CONFIG={} {} machines list\n\
         Unknown machines boot the discovery bootenv: build its image first with `plinth discovery build --data-dir {}`.\n\
         Stop everything with:  plinth lab down --dir {}\n",
        o.name,
        server_log.display(),
        o.machines,
        if o.machines == 1 { "" } else { "s" },
        lines.join("\n"),
        o.name,
        data.join("tls/ca.pem").display(),
        o.dir.join("cli-config.json").display(),
        exe_s,
        data.display(),
        o.dir.display()
    ))
}

/// Whether `pid` is still a process this lab started (its command line
/// names QEMU or this program): a recycled PID is never signalled.
fn ours(pid: u32, exe: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let c = String::from_utf8_lossy(&c);
        c.contains("qemu-system") || (!exe.is_empty() && c.contains(exe))
    })
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Stops every process `state` recorded: SIGTERM, then SIGKILL after 10 s.
fn stop_pids(state: &Value) {
    let exe = std::env::current_exe().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let pids: Vec<u32> =
        state["pids"].as_array().into_iter().flatten().filter_map(|p| p.as_u64()).map(|p| p as u32).collect();
    for &pid in pids.iter().rev() {
        if ours(pid, &exe) {
            signal(pid, "-TERM");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && pids.iter().any(|p| ours(*p, &exe)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for &pid in &pids {
        if ours(pid, &exe) {
            signal(pid, "-KILL");
        }
    }
}

/// Stops what `up` started in `dir` and deletes its namespace.
pub fn down(dir: &Path) -> Result<String, LabError> {
    let path = dir.join(STATE);
    let text =
        std::fs::read_to_string(&path).map_err(|_| err(format!("no lab is up in {} (no {STATE})", dir.display())))?;
    let state: Value = serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))?;
    stop_pids(&state);
    let name = state["namespace"].as_str().unwrap_or_default().to_owned();
    if !name.is_empty() && Namespace::exists(&name) {
        Namespace { name: name.clone() }.delete()?;
    }
    let _ = std::fs::remove_file(&path);
    let n = state["machines"].as_array().map_or(0, Vec::len);
    Ok(format!(
        "lab `{name}` is down: server and {n} machine(s) stopped, namespace deleted (data kept in {})\n",
        dir.display()
    ))
}
