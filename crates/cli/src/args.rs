//! The client's command line: global flags and every subcommand's arguments.

use clap::{Arg, ArgAction, Command, value_parser};
use plinth_model::Kind;
use std::path::PathBuf;

/// Adds the global client flags and every client subcommand to `cmd`.
pub fn augment(cmd: Command) -> Command {
    let mut cmd = cmd
        .arg(
            Arg::new("endpoint")
                .long("endpoint")
                .global(true)
                .env("PLINTH_ENDPOINT")
                .help("API endpoint, e.g. https://127.0.0.1:8092"),
        )
        .arg(
            Arg::new("token").long("token").global(true).env("PLINTH_TOKEN").hide_env_values(true).help("Bearer token"),
        )
        .arg(
            Arg::new("allow-http")
                .long("allow-http")
                .global(true)
                .env("PLINTH_ALLOW_HTTP")
                .action(ArgAction::SetTrue)
                .help("Let credentials go to a plain http:// endpoint (in the clear; for a local test only)"),
        )
        .arg(
            Arg::new("ca-cert")
                .long("ca-cert")
                .global(true)
                .env("PLINTH_CA_CERT")
                .value_parser(value_parser!(PathBuf))
                .help("CA certificate to trust (the server's <data-dir>/tls/ca.pem)"),
        )
        .arg(
            Arg::new("output")
                .short('o')
                .long("output")
                .global(true)
                .value_parser(["table", "json", "yaml"])
                .default_value("table")
                .help("Output format"),
        )
        .subcommand(
            Command::new("login")
                .about("Get a token with a username and password and save it to the config file")
                .arg(Arg::new("username").long("username").short('u').default_value("admin"))
                .arg(
                    Arg::new("password-file")
                        .long("password-file")
                        .value_parser(value_parser!(PathBuf))
                        .help("Read the password from this file"),
                )
                .arg(
                    Arg::new("password-stdin")
                        .long("password-stdin")
                        .action(ArgAction::SetTrue)
                        .help("Read the password from standard input"),
                )
                .arg(Arg::new("ttl").long("ttl").value_parser(value_parser!(u64)).help("Token lifetime in seconds")),
        )
        .subcommand(Command::new("logout").about("Revoke the saved token and forget it"))
        .subcommand(
            Command::new("events")
                .about("Follow the event stream, one JSON object per line")
                .arg(Arg::new("kind").long("kind").help("Comma-separated kinds"))
                .arg(Arg::new("key").long("key"))
                .arg(
                    Arg::new("count")
                        .long("count")
                        .value_parser(value_parser!(u64))
                        .help("Stop after this many events"),
                ),
        )
        .subcommand(
            Command::new("boot-events")
                .about("Show DHCP, TFTP and HTTP boot requests, oldest first")
                .arg(Arg::new("mac").long("mac").help("Only this machine's (MAC address)"))
                .arg(Arg::new("limit").long("limit").value_parser(value_parser!(usize)).default_value("1000")),
        )
        .subcommand({
            let src = || Arg::new("pack").required(true).help("A pack directory or bundle file");
            let force =
                || Arg::new("force").long("force").action(ArgAction::SetTrue).help("Apply even if the plan has errors");
            let name = || Arg::new("name").required(true).help("The pack's name");
            let canary = || {
                Arg::new("canary").long("canary").value_name("MACHINES").help(
                    "Comma-separated machine ids or names that take the new version; the others stay until `promote`",
                )
            };
            Command::new("content")
                .about("Content packs: bundle, validate, plan, install or upgrade, roll back, remove")
                .subcommand_required(true)
                .subcommand(
                    Command::new("bundle")
                        .about("Write a pack directory as one bundle file (after validating it)")
                        .arg(Arg::new("dir").required(true))
                        .arg(Arg::new("out").short('O').long("out").help("Bundle file to write [default: stdout]")),
                )
                .subcommand(
                    Command::new("unbundle")
                        .about("Write a bundle out as a pack directory")
                        .arg(Arg::new("bundle").required(true))
                        .arg(Arg::new("dir").required(true)),
                )
                .subcommand(Command::new("validate").about("Check a pack locally and list every problem").arg(src()))
                .subcommand(
                    Command::new("export")
                        .about("Write the site's own layer (what no pack installed) as a pack directory")
                        .arg(
                            Arg::new("site")
                                .long("site")
                                .action(ArgAction::SetTrue)
                                .required(true)
                                .help("The site layer"),
                        )
                        .arg(Arg::new("name").long("name").required(true).help("The new pack's name"))
                        .arg(Arg::new("pack-version").long("pack-version").default_value("0.1.0").help("Its version"))
                        .arg(Arg::new("dir").required(true).help("Directory to write")),
                )
                .subcommand(
                    Command::new("plan")
                        .about("What installing or upgrading to a pack would change (per object and per machine)")
                        .arg(src())
                        .arg(
                            Arg::new("diffs")
                                .long("diffs")
                                .action(ArgAction::SetTrue)
                                .help("Show every machine's diffs"),
                        )
                        .arg(canary()),
                )
                .subcommand(
                    Command::new("install").about("Install or upgrade a pack").arg(src()).arg(force()).arg(canary()),
                )
                .subcommand(
                    Command::new("promote")
                        .about("After a canary upgrade, move every other machine to the installed version")
                        .arg(name())
                        .arg(force()),
                )
                .subcommand(
                    Command::new("rollback").about("Restore a pack's previous version").arg(name()).arg(force()),
                )
                .subcommand(Command::new("remove").about("Remove a pack and its objects").arg(name()).arg(force()))
        })
        .subcommand(
            Command::new("audit")
                .about("Show the audit log (changes and secure-value reads), oldest first")
                .arg(Arg::new("kind").long("kind").help("Only this kind's (plural, e.g. machines)"))
                .arg(Arg::new("key").long("key").help("Only this object's"))
                .arg(Arg::new("actor").long("actor").help("Only this actor's (user:NAME, machine:ID, server)"))
                .arg(
                    Arg::new("after")
                        .long("after")
                        .value_parser(value_parser!(u64))
                        .help("Only after this sequence number"),
                )
                .arg(Arg::new("limit").long("limit").value_parser(value_parser!(usize)).default_value("1000")),
        )
        .subcommand(
            Command::new("join-tokens")
                .about(
                    "Join tokens: what `plinth-agent join` registers a machine with (a cloud VM, an existing server)",
                )
                .subcommand_required(true)
                .subcommand(
                    Command::new("create")
                        .about("Create a join token and print it (it is shown once; list and revoke it with `tokens`)")
                        .arg(
                            Arg::new("uses")
                                .long("uses")
                                .value_parser(value_parser!(u32))
                                .default_value("1")
                                .help("How many machines may register with it"),
                        )
                        .arg(
                            Arg::new("ttl")
                                .long("ttl")
                                .value_parser(value_parser!(u64))
                                .default_value("3600")
                                .help("Seconds until it expires"),
                        )
                        .arg(Arg::new("workflow").long("workflow").help("Workflow the machines it registers start"))
                        .arg(
                            Arg::new("profile")
                                .long("profile")
                                .action(ArgAction::Append)
                                .help("Profile given to the machines it registers (repeatable)"),
                        )
                        .arg(Arg::new("description").long("description").default_value("").help("For humans")),
                ),
        )
        .subcommand(
            Command::new("completions")
                .about("Print a shell completion script")
                .arg(Arg::new("shell").required(true).value_parser(value_parser!(clap_complete::Shell))),
        );
    for kind in Kind::ALL {
        cmd = cmd.subcommand(kind_command(kind));
    }
    cmd
}

fn body_args(cmd: Command) -> Command {
    cmd.arg(
        Arg::new("file")
            .short('f')
            .long("file")
            .value_parser(value_parser!(PathBuf))
            .help("JSON or YAML file with the object (`-` for standard input)"),
    )
    .arg(Arg::new("data").long("data").short('d').conflicts_with("file").help("The object as inline JSON"))
}

fn if_match_arg() -> Arg {
    Arg::new("if-match")
        .long("if-match")
        .value_parser(value_parser!(u64))
        .help("Fail unless the object is at this revision")
}

fn kind_command(kind: Kind) -> Command {
    let key = || Arg::new("key").required(true).help(format!("The object's `{}`", kind.key_field()));
    let mut cmd = Command::new(kind.plural())
        .about(format!("Manage {}", kind.plural()))
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(
            Command::new("list")
                .about(format!("List {}", kind.plural()))
                .arg(
                    Arg::new("filter")
                        .long("filter")
                        .short('F')
                        .action(ArgAction::Append)
                        .help("FIELD=VALUE equality filter (repeatable), e.g. bootenv=discovery"),
                )
                .arg(
                    Arg::new("limit")
                        .long("limit")
                        .value_parser(value_parser!(usize))
                        .help("At most this many objects"),
                ),
        )
        .subcommand(Command::new("show").about("Show one object").arg(key()))
        .subcommand(
            Command::new("delete")
                .visible_alias(if kind == Kind::Token { "revoke" } else { "rm" })
                .about("Delete one object")
                .arg(key())
                .arg(if_match_arg()),
        );
    if kind == Kind::Machine {
        cmd = cmd
            .subcommand(
                Command::new("workflow")
                    .about("Start a workflow on a machine from its first stage")
                    .arg(key())
                    .arg(Arg::new("workflow").required(true).help("The workflow's name")),
            )
            .subcommand(Command::new("resume").about("Go on after a failed task (it runs again) or a pause").arg(key()))
            .subcommand(
                Command::new("timeline")
                    .about("Everything recorded about a machine, oldest first: DHCP, TFTP, HTTP, agent, jobs, stages")
                    .arg(key()),
            );
        cmd = cmd.subcommand(
            Command::new("params").about("Show a machine's resolved params").arg(key()).arg(
                Arg::new("explain")
                    .long("explain")
                    .action(ArgAction::SetTrue)
                    .help("Show where each value came from and what it shadows"),
            ),
        );
        cmd = crate::power::commands(cmd);
    }
    if kind == Kind::Job {
        cmd = cmd.subcommand(Command::new("log").about("Print a job's output").arg(key()));
    }
    if kind == Kind::Machine {
        cmd = cmd.subcommand(
            Command::new("accept")
                .about("Trust a machine discovery registered with the site's secrets (secure params)")
                .arg(key()),
        );
    }
    if kind == Kind::Conflict {
        cmd = cmd
            .subcommand(
                Command::new("accept")
                    .about("A held discovery registration is the machine it matched: let it have that machine")
                    .arg(key()),
            )
            .subcommand(
                Command::new("reject").about("A held discovery registration is not the machine it matched").arg(key()),
            );
    }
    if kind == Kind::User {
        cmd = cmd.subcommand(
            Command::new("reset-password")
                .about("On the server's host: give a user a new password and revoke its tokens (recovery; no API)")
                .long_about(
                    "Works on the server's store directly, with the server running or not: sets a new password for \
                     NAME (from --password-file, or a random one printed once), revokes every token of that user, \
                     and records the change in the audit log as done on the host. The way back in when the admin's \
                     password is lost, or when failed logins from elsewhere keep it refused.",
                )
                .arg(key())
                .arg(
                    Arg::new("password-file")
                        .long("password-file")
                        .value_parser(value_parser!(PathBuf))
                        .help("A file whose first line is the new password [default: a random one, printed]"),
                )
                .arg(
                    Arg::new("data-dir")
                        .long("data-dir")
                        .env("PLINTH_DATA_DIR")
                        .value_parser(value_parser!(PathBuf))
                        .help("The server's data dir [default: ./plinth-data]"),
                ),
        );
    }
    if kind == Kind::Machine {
        cmd = cmd.subcommand(
            Command::new("metadata-token")
                .about(
                    "Mint the machine's metadata token (its earlier ones are revoked) and print its NoCloud seed URL",
                )
                .long_about(
                    "Mints a token that reads only this machine's metadata (/t/<token>/meta-data, user-data, \
                     vendor-data, network-config and EC2's latest/...) and expires after the server's \
                     --metadata-token-ttl. Prints it with the NoCloud seed URL a cloud VM is given \
                     (ds=nocloud-net;s=<seed_url>, as SMBIOS serial or kernel argument). Needs the claim to read \
                     the machine's secure values, which its metadata may carry.",
                )
                .arg(key()),
        );
    }
    if kind == Kind::Image {
        cmd = cmd.subcommand(file_root_args(
            Command::new("import")
                .about("Register a disk image: a local file (copied into the file root) or an http(s) URL")
                .long_about(
                    "Reads SOURCE once for its SHA-256 and size (a local file is also decoded, for the bytes a \
                     disk needs) and creates or replaces image NAME. A local file is copied to \
                     <file-root>/images/NAME.<format> and served by boot HTTP; a URL is registered as it is. The \
                     format is what the file's first bytes show (gzip, xz, zstd, qcow2), else its name, else raw; \
                     qcow2 is registered but the deploy refuses it (convert it to raw). Run it on the server's host \
                     for a local file.",
                )
                .arg(key())
                .arg(Arg::new("source").required(true).help("A file, or an http:// or https:// URL"))
                .arg(
                    Arg::new("format")
                        .long("format")
                        .help("raw, raw.gz, raw.xz, raw.zst or qcow2 [default: from the file]"),
                )
                .arg(Arg::new("sha256").long("sha256").help("Refuse the image unless its SHA-256 is this"))
                .arg(Arg::new("description").long("description").help("Description for humans")),
        ));
    }
    if kind == Kind::BootEnv {
        cmd = cmd.subcommand(file_root_args(
            Command::new("import-iso")
                .about("Verify an OS image's SHA-256 and extract its tree into the file root under the bootenv's name")
                .long_about(
                    "Verifies IMAGE against --sha256 (or the SHA-256 the bootenv pins), extracts its whole tree \
                     (Rock Ridge or Joliet names) into <file-root>/<NAME>/, checks that the kernel and initrds the \
                     bootenv boots are there, and pins the image's checksum in the bootenv. Run it on the server's \
                     host. Running it again with the same image rewrites only files that are missing or changed.",
                )
                .arg(key())
                .arg(Arg::new("image").required(true).value_parser(value_parser!(PathBuf)).help("The ISO file"))
                .arg(Arg::new("sha256").long("sha256").help("Expected SHA-256 (from the distribution's SHA256SUMS)"))
                .arg(
                    Arg::new("keep-image")
                        .long("keep-image")
                        .action(ArgAction::SetTrue)
                        .help("Also keep the ISO itself in the folder (for installers that download it)"),
                ),
        ));
    }
    if kind.writable_via_api() {
        cmd = cmd
            .subcommand(body_args(Command::new("create").about("Create an object")))
            .subcommand(body_args(
                Command::new("update").about("Replace an object").arg(key()).arg(if_match_arg()).arg(override_arg()),
            ))
            .subcommand(body_args(
                Command::new("patch")
                    .about("Merge-patch an object (RFC 7396)")
                    .arg(key())
                    .arg(if_match_arg())
                    .arg(override_arg()),
            ));
    }
    cmd
}

/// `--data-dir` and `--file-root`: where a command that writes into the
/// server's file root on its host writes.
fn file_root_args(cmd: Command) -> Command {
    cmd.arg(
        Arg::new("data-dir")
            .long("data-dir")
            .env("PLINTH_DATA_DIR")
            .value_parser(value_parser!(PathBuf))
            .help("The server's data dir, whose files/ is the file root [default: ./plinth-data]"),
    )
    .arg(
        Arg::new("file-root")
            .long("file-root")
            .value_parser(value_parser!(PathBuf))
            .help("The file root (instead of <data-dir>/files)"),
    )
}

/// The file root [`file_root_args`] name.
pub(crate) fn file_root(m: &clap::ArgMatches) -> PathBuf {
    m.get_one::<PathBuf>("file-root").cloned().unwrap_or_else(|| {
        m.get_one::<PathBuf>("data-dir").cloned().unwrap_or_else(|| PathBuf::from("./plinth-data")).join("files")
    })
}

/// `--override`: change an object a content pack installed, as the site's override.
fn override_arg() -> Arg {
    Arg::new("override")
        .long("override")
        .action(ArgAction::SetTrue)
        .help("Change an object a content pack installed, making it the site's override (upgrades keep it)")
}
