//! The binary's command line: `serve` and the commands that work locally
//! (`bootloaders`, `discovery`, `secrets`, `lab`), then every client command
//! from `plinth-cli`.

use clap::{Arg, ArgAction, Command, value_parser};
use std::path::PathBuf;

/// The whole command line.
pub fn command() -> Command {
    let serve = Command::new("serve")
        .about("Run the Plinth server on its embedded store")
        .arg(
            Arg::new("data-dir")
                .long("data-dir")
                .env("PLINTH_DATA_DIR")
                .default_value("./plinth-data")
                .value_parser(value_parser!(PathBuf))
                .help("Where the store, TLS material and files live"),
        )
        .arg(Arg::new("api-addr").long("api-addr").default_value("0.0.0.0:8092").help("HTTPS API listen address"))
        .arg(
            Arg::new("http-addr")
                .long("http-addr")
                .default_value("0.0.0.0:8091")
                .help("Plain-HTTP boot file server address, or `off`"),
        )
        .arg(
            Arg::new("dhcp-port")
                .long("dhcp-port")
                .default_value("67")
                .help("DHCP server port, or `off`; DHCP answers only on interfaces named by enabled subnets"),
        )
        .arg(Arg::new("tftp-addr").long("tftp-addr").default_value("0.0.0.0:69").help("TFTP server address, or `off`"))
        .arg(
            Arg::new("metrics-addr")
                .long("metrics-addr")
                .env("PLINTH_METRICS_ADDR")
                .default_value("off")
                .help("Plain-HTTP address for /metrics (Prometheus), /healthz and /readyz, or `off`; no token: bind it to loopback or a management network, e.g. 127.0.0.1:9092"),
        )
        .arg(
            Arg::new("tftp-per-client")
                .long("tftp-per-client")
                .default_value("32")
                .value_parser(value_parser!(u32).range(1..=1024))
                .help("Most TFTP transfers one client address may have at once"),
        )
        .arg(
            Arg::new("file-root")
                .long("file-root")
                .value_parser(value_parser!(PathBuf))
                .help("Directory served over TFTP and HTTP [default: <data-dir>/files]"),
        )
        .arg(
            Arg::new("tls-cert")
                .long("tls-cert")
                .requires("tls-key")
                .value_parser(value_parser!(PathBuf))
                .help("PEM certificate chain instead of the local CA's"),
        )
        .arg(
            Arg::new("tls-key")
                .long("tls-key")
                .requires("tls-cert")
                .value_parser(value_parser!(PathBuf))
                .help("PEM private key for --tls-cert"),
        )
        .arg(
            Arg::new("tls-san")
                .long("tls-san")
                .action(ArgAction::Append)
                .help("Extra DNS name or IP for the generated certificate (repeatable)"),
        )
        .arg(
            Arg::new("token-ttl")
                .long("token-ttl")
                .default_value("86400")
                .value_parser(value_parser!(u64).range(60..=2_592_000))
                .help("Default token lifetime, seconds"),
        )
        .arg(
            Arg::new("machine-token-ttl")
                .long("machine-token-ttl")
                .default_value("900")
                .value_parser(value_parser!(u64).range(60..=3_600))
                .help("Lifetime of the boot credentials boot files carry (machine_token()), seconds; each is traded once for a session"),
        )
        .arg(
            Arg::new("metadata-token-ttl")
                .long("metadata-token-ttl")
                .default_value("86400")
                .value_parser(value_parser!(u64).range(60..=30 * 86_400))
                .help("Lifetime of the metadata tokens an image deploy leaves on the disk (and `machines metadata-token` mints), seconds; each new one revokes the machine's earlier ones"),
        )
        .arg(
            Arg::new("machine-session-max")
                .long("machine-session-max")
                .default_value("2592000")
                .value_parser(value_parser!(u64).range(3_600..=31_536_000))
                .help("Longest a machine's session lasts, renewals included, from its boot (or registration), seconds"),
        )
        .arg(
            Arg::new("job-log-max")
                .long("job-log-max")
                .default_value("16777216")
                .value_parser(value_parser!(u64).range(4_096..))
                .help("Most log one job may store, bytes; beyond it the log is cut, and says so"),
        )
        .arg(
            Arg::new("power-poll")
                .long("power-poll")
                .default_value("300")
                .value_parser(value_parser!(u64).range(0..=86_400))
                .help("Seconds between readings of every BMC's power state; 0: never polled"),
        )
        .arg(
            Arg::new("power-concurrency")
                .long("power-concurrency")
                .default_value("16")
                .value_parser(value_parser!(u32).range(1..=256))
                .help("Most BMC calls at once"),
        )
        .arg(
            Arg::new("bmc-timeout")
                .long("bmc-timeout")
                .default_value("20")
                .value_parser(value_parser!(u64).range(2..=300))
                .help("Seconds one BMC call may take"),
        )
        .arg(
            Arg::new("reboot-timeout")
                .long("reboot-timeout")
                .default_value("1200")
                .value_parser(value_parser!(u64).range(30..=86_400))
                .help("Seconds a machine with a BMC may take to come back from a reboot before it is power-cycled"),
        )
        .arg(
            Arg::new("reboot-cycles")
                .long("reboot-cycles")
                .default_value("2")
                .value_parser(value_parser!(u32).range(0..=10))
                .help("Power cycles for one reboot that does not come back, before giving up"),
        )
        .arg(
            Arg::new("job-grace")
                .long("job-grace")
                .default_value("120")
                .value_parser(value_parser!(u64).range(10..=3600))
                .help("Seconds past its task's time limit a job may run with no word from its agent before its machine is power-cycled"),
        )
        .arg(
            Arg::new("ipmitool")
                .long("ipmitool")
                .value_parser(value_parser!(std::path::PathBuf))
                .help("The ipmitool program [default: ipmitool on PATH]"),
        )
        .arg(
            Arg::new("boot-events-days")
                .long("boot-events-days")
                .default_value("30")
                .value_parser(value_parser!(u64).range(1..=3650))
                .help("Days boot events (and machines' timelines) are kept"),
        )
        .arg(
            Arg::new("boot-events-max")
                .long("boot-events-max")
                .default_value("1000000")
                .value_parser(value_parser!(u64).range(1_000..))
                .help("Most boot events kept; the oldest beyond it are pruned"),
        )
        .arg(
            Arg::new("discovery-tokens-max")
                .long("discovery-tokens-max")
                .default_value("1024")
                .value_parser(value_parser!(u64).range(1..=1_000_000))
                .help("Most join tokens unknown machines' boot scripts may have outstanding (10 min each)"),
        )
        .arg(
            Arg::new("discovery-tokens-per-subnet")
                .long("discovery-tokens-per-subnet")
                .default_value("256")
                .value_parser(value_parser!(u64).range(1..=1_000_000))
                .help("Most of those per subnet (the lease's, else the client's /24)"),
        )
        .arg(
            Arg::new("discovery-tokens-per-address")
                .long("discovery-tokens-per-address")
                .default_value("10")
                .value_parser(value_parser!(u32).range(1..=10_000))
                .help("Most join tokens one client address is given a minute"),
        )
        .arg(Arg::new("boot-url").long("boot-url").help(
            "The boot HTTP server's URL as machines reach it, for boot files [default: the address each request came in on]",
        ))
        .arg(Arg::new("api-url").long("api-url").help(
            "The API's URL as machines reach it, for boot and task files [default: the boot server's host, the API's port]",
        ))
        .arg(
            Arg::new("log-format")
                .long("log-format")
                .default_value("text")
                .value_parser(["text", "json"])
                .help("Log format"),
        );
    let bootloaders =
        Command::new("bootloaders").about("Manage boot loaders in the file root").subcommand_required(true).subcommand(
            Command::new("install")
                .about("Copy iPXE loaders from the system's ipxe package into the file root")
                .arg(
                    Arg::new("from")
                        .long("from")
                        .value_parser(value_parser!(PathBuf))
                        .help("Folder with the loaders [default: /usr/lib/ipxe]"),
                )
                .arg(
                    Arg::new("data-dir")
                        .long("data-dir")
                        .env("PLINTH_DATA_DIR")
                        .value_parser(value_parser!(PathBuf))
                        .help("Data dir whose files/ to fill [default: ./plinth-data]"),
                )
                .arg(
                    Arg::new("file-root")
                        .long("file-root")
                        .value_parser(value_parser!(PathBuf))
                        .help("File root to fill (instead of <data-dir>/files)"),
                ),
        );
    let path_arg = |name: &'static str, help: &'static str| {
        Arg::new(name).long(name).value_parser(value_parser!(PathBuf)).help(help)
    };
    let discovery = Command::new("discovery").about("Manage the discovery image").subcommand_required(true).subcommand(
        Command::new("build")
            .about("Assemble the discovery image (vmlinuz, initrd.img) in the file root from a distribution kernel")
            .long_about(
                "Assembles the discovery image from a kernel and its modules (--kernel-package \
                 linux-image-*.deb, read by Plinth itself; or a package unpacked with `dpkg -x PKG.deb DIR`: \
                 --kernel DIR/boot/vmlinuz-*, --modules DIR/lib/modules/<version>), a static busybox and a static \
                 plinth-agent. The initramfs holds the \
                 server's CA certificate, the NIC and disk modules with their dependencies, and an init that gets an \
                 address by DHCP and runs `plinth-agent join`. The architecture is the agent's: an x86-64 image \
                 goes to discovery/, an ARM64 one to discovery/arm64/ (the discovery bootenv's UEFI variant); the \
                 busybox and the kernel must match it. The agent is also copied to agent/plinth-agent-<arch> for \
                 installed systems.",
            )
            .arg(
                Arg::new("kernel-package")
                    .long("kernel-package")
                    .value_parser(value_parser!(PathBuf))
                    .action(clap::ArgAction::Append)
                    .conflicts_with_all(["kernel", "modules"])
                    .required_unless_present("kernel")
                    .help(
                        "A kernel package (linux-image-*.deb; for Ubuntu give linux-modules-*.deb too): the kernel \
                         and its modules are taken from it, no dpkg needed",
                    ),
            )
            .arg(path_arg("kernel", "The kernel image (vmlinuz), instead of --kernel-package").requires("modules"))
            .arg(path_arg("modules", "The kernel's modules folder (lib/modules/<version>)").requires("kernel"))
            .arg(path_arg("busybox", "A static busybox [default: /bin/busybox from busybox-static]"))
            .arg(path_arg("agent", "A static plinth-agent [default: next to this binary]"))
            .arg(path_arg("ca-cert", "The server's CA certificate [default: <data-dir>/tls/ca.pem]"))
            .arg(
                Arg::new("arch")
                    .long("arch")
                    .value_parser(["amd64", "arm64"])
                    .help("Fail unless the agent is built for this architecture"),
            )
            .arg(
                Arg::new("data-dir")
                    .long("data-dir")
                    .env("PLINTH_DATA_DIR")
                    .value_parser(value_parser!(PathBuf))
                    .help("The server's data dir [default: ./plinth-data]"),
            )
            .arg(path_arg("file-root", "The file root (instead of <data-dir>/files)"))
            .arg(
                Arg::new("iso")
                    .long("iso")
                    .action(clap::ArgAction::SetTrue)
                    .help("Also write discovery/discovery.iso, BIOS and UEFI bootable, for Redfish virtual media (needs grub-mkrescue, xorriso, mtools, grub-pc-bin, grub-efi-amd64-bin)"),
            )
            .arg(
                Arg::new("with-modules")
                    .long("with-modules")
                    .help("Comma-separated module names [default: common NICs and disks]"),
            ),
    );
    let data_dir_arg = || {
        Arg::new("data-dir")
            .long("data-dir")
            .env("PLINTH_DATA_DIR")
            .value_parser(value_parser!(PathBuf))
            .help("The server's data dir [default: ./plinth-data]")
    };
    let secrets = Command::new("secrets")
        .about("Manage the keys that seal secure param values (in <data-dir>/secret.keys)")
        .subcommand_required(true)
        .subcommand(
            Command::new("rotate")
                .about("Add a new sealing key; the server re-seals every secure value under it at its next start")
                .arg(data_dir_arg()),
        )
        .subcommand(
            Command::new("prune")
                .about("Drop every key but the current one (after a restart has re-sealed under it)")
                .arg(data_dir_arg()),
        );
    let lab_dir = || {
        Arg::new("dir")
            .long("dir")
            .value_parser(value_parser!(PathBuf))
            .default_value("./plinth-lab")
            .help("Where the lab keeps its server's data, VM disks, consoles and state")
    };
    let lab = Command::new("lab")
        .about("Rehearse on VMs: a private network namespace, a Plinth server on its bridge, QEMU guests")
        .subcommand_required(true)
        .subcommand(
            Command::new("up")
                .about(
                    "Create the namespace and bridge, start the server and the guests (needs root, QEMU, iPXE, OVMF)",
                )
                .arg(lab_dir())
                .arg(Arg::new("name").long("name").default_value("plinth-lab").help("The namespace's name"))
                .arg(Arg::new("machines").long("machines").value_parser(value_parser!(usize)).default_value("1"))
                .arg(
                    Arg::new("firmware").long("firmware").value_parser(["bios", "uefi", "mixed"]).default_value("bios"),
                )
                .arg(
                    Arg::new("memory")
                        .long("memory")
                        .value_parser(value_parser!(u32))
                        .default_value("768")
                        .help("MiB per guest"),
                )
                .arg(
                    Arg::new("disk")
                        .long("disk")
                        .value_parser(value_parser!(u64))
                        .default_value("4")
                        .help("GiB per guest"),
                )
                .arg(
                    Arg::new("net").long("net").default_value("10.123.0").help("The lab network's first three octets"),
                ),
        )
        .subcommand(Command::new("down").about("Stop what `up` started and delete the namespace").arg(lab_dir()));
    let root = Command::new("plinth")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Provisioning for bare metal and cloud machines")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(serve)
        .subcommand(bootloaders)
        .subcommand(discovery)
        .subcommand(secrets)
        .subcommand(lab);
    plinth_cli::augment(root)
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_is_consistent() {
        super::command().debug_assert();
    }
}
