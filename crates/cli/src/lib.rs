//! Plinth's command-line client.
//!
//! `plinth <kind> list|show|create|update|patch|delete` for every kind,
//! `plinth login`, `plinth logout`, `plinth events` and `plinth completions`.
//! It talks to the API only; it never opens the store. The endpoint, token
//! and CA certificate come from flags, then `PLINTH_ENDPOINT` /
//! `PLINTH_TOKEN` / `PLINTH_CA_CERT`, then the file `plinth login` wrote.
#![forbid(unsafe_code)]

mod client;
pub mod config;
pub mod output;

pub use client::{Client, ClientError, Reply};

use clap::{Arg, ArgAction, ArgMatches, Command, value_parser};
use output::Format;
use plinth_model::Kind;
use reqwest::Method;
use serde_json::Value;
use std::io::{Read, Write};
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
    }
    if kind == Kind::Job {
        cmd = cmd.subcommand(Command::new("log").about("Print a job's output").arg(key()));
    }
    if kind == Kind::BootEnv {
        cmd = cmd.subcommand(
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
                )
                .arg(
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
                ),
        );
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

fn read_body(m: &ArgMatches) -> Result<Value, ClientError> {
    let (text, source) = if let Some(d) = m.get_one::<String>("data") {
        (d.clone(), "--data".to_owned())
    } else if let Some(p) = m.get_one::<PathBuf>("file") {
        if p.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(|e| ClientError::Input(format!("standard input: {e}")))?;
            (s, "standard input".to_owned())
        } else {
            let s = std::fs::read_to_string(p).map_err(|e| ClientError::Input(format!("{}: {e}", p.display())))?;
            (s, p.display().to_string())
        }
    } else {
        return Err(ClientError::Input("give the object with -f FILE (JSON or YAML) or --data JSON".into()));
    };
    match serde_json::from_str(&text) {
        Ok(v) => Ok(v),
        Err(json_err) => serde_yaml::from_str::<Value>(&text)
            .map_err(|_| ClientError::Input(format!("{source} is neither JSON nor YAML: {json_err}"))),
    }
}

fn client(global: &ArgMatches, cfg: &config::Config, need_token: bool) -> Result<Client, ClientError> {
    let endpoint = global.get_one::<String>("endpoint").cloned().or_else(|| cfg.endpoint.clone()).ok_or_else(|| {
        ClientError::Input(
            "no endpoint: pass --endpoint, set PLINTH_ENDPOINT, or run `plinth login --endpoint URL`".into(),
        )
    })?;
    let token = global.get_one::<String>("token").cloned().or_else(|| cfg.token.clone());
    if need_token && token.is_none() {
        return Err(ClientError::Input("not logged in: run `plinth login`, or pass --token / set PLINTH_TOKEN".into()));
    }
    let ca = global.get_one::<PathBuf>("ca-cert").cloned().or_else(|| cfg.ca_cert.clone());
    Client::new(&endpoint, token, ca.as_deref())
}

fn encode_key(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Runs a client subcommand; `root` is the whole command (for completions).
/// Returns the process exit code.
pub async fn run(name: &str, sub: &ArgMatches, global: &ArgMatches, root: &mut Command) -> u8 {
    let format = Format::parse(global.get_one::<String>("output").map(String::as_str).unwrap_or("table"));
    match run_inner(name, sub, global, root, format).await {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(out.as_bytes());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

async fn run_inner(
    name: &str,
    sub: &ArgMatches,
    global: &ArgMatches,
    root: &mut Command,
    format: Format,
) -> Result<String, ClientError> {
    let cfg = config::load()?;
    match name {
        "completions" => {
            let shell = *sub
                .get_one::<clap_complete::Shell>("shell")
                .ok_or_else(|| ClientError::Input("which shell?".into()))?;
            let mut buf = Vec::new();
            clap_complete::generate(shell, root, "plinth", &mut buf);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        "login" => login(sub, global, cfg).await,
        "logout" => {
            let c = client(global, &cfg, true)?;
            let token = global.get_one::<String>("token").cloned().or_else(|| cfg.token.clone()).unwrap_or_default();
            if let Some(id) = token.strip_prefix("plt_").and_then(|t| t.split_once('.')).map(|(id, _)| id.to_owned()) {
                c.call(Method::DELETE, &format!("/api/v1/tokens/{}", encode_key(&id)), None, None).await?;
            }
            let mut cfg = cfg;
            cfg.token = None;
            config::save(&cfg)?;
            Ok("logged out\n".into())
        }
        "boot-events" => {
            let c = client(global, &cfg, true)?;
            let mut q = vec![format!("limit={}", sub.get_one::<usize>("limit").copied().unwrap_or(1000))];
            if let Some(m) = sub.get_one::<String>("mac") {
                q.push(format!("mac={}", encode_key(m)));
            }
            let reply = c.call(Method::GET, &format!("/api/v1/boot-events?{}", q.join("&")), None, None).await?;
            let items = reply.body.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            Ok(match format {
                Format::Table => output::table(&["id", "at", "mac", "address", "service", "detail"], &items),
                other => output::one(&Value::Array(items), other),
            })
        }
        "content" => {
            let Some((action, m)) = sub.subcommand() else {
                return Err(ClientError::Input("which content action?".into()));
            };
            content(action, m, global, &cfg, format).await
        }
        "audit" => {
            let c = client(global, &cfg, true)?;
            let mut q = vec![format!("limit={}", sub.get_one::<usize>("limit").copied().unwrap_or(1000))];
            for name in ["kind", "key", "actor"] {
                if let Some(v) = sub.get_one::<String>(name) {
                    q.push(format!("{name}={}", encode_key(v)));
                }
            }
            if let Some(a) = sub.get_one::<u64>("after") {
                q.push(format!("after={a}"));
            }
            let reply = c.call(Method::GET, &format!("/api/v1/audit?{}", q.join("&")), None, None).await?;
            let items = reply.body.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            Ok(match format {
                Format::Table => output::table(&["seq", "at", "actor", "action", "kind", "key", "detail"], &items),
                other => output::one(&Value::Array(items), other),
            })
        }
        "join-tokens" => {
            let c = client(global, &cfg, true)?;
            let m = sub.subcommand_matches("create").ok_or_else(|| ClientError::Input("which action?".into()))?;
            let profiles: Vec<&String> = m.get_many::<String>("profile").into_iter().flatten().collect();
            let body = serde_json::json!({
                "uses": m.get_one::<u32>("uses"),
                "ttl_secs": m.get_one::<u64>("ttl"),
                "workflow": m.get_one::<String>("workflow"),
                "profiles": profiles,
                "description": m.get_one::<String>("description"),
            });
            let reply = c.call(Method::POST, "/api/v1/join-tokens", Some(&body), None).await?;
            Ok(match format {
                Format::Table => format!("{}\n", reply.body["token"].as_str().unwrap_or_default()),
                other => output::one(&reply.body, other),
            })
        }
        "events" => {
            let c = client(global, &cfg, true)?;
            let mut q = Vec::new();
            if let Some(k) = sub.get_one::<String>("kind") {
                q.push(format!("kind={}", encode_key(k)));
            }
            if let Some(k) = sub.get_one::<String>("key") {
                q.push(format!("key={}", encode_key(k)));
            }
            let query = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
            follow_events(&c, &query, sub.get_one::<u64>("count").copied()).await
        }
        plural => {
            let kind =
                Kind::from_plural(plural).ok_or_else(|| ClientError::Input(format!("unknown command `{plural}`")))?;
            let c = client(global, &cfg, true)?;
            let (action, m) = sub.subcommand().ok_or_else(|| ClientError::Input("which action?".into()))?;
            object_command(&c, kind, action, m, format).await
        }
    }
}

async fn login(sub: &ArgMatches, global: &ArgMatches, mut cfg: config::Config) -> Result<String, ClientError> {
    let username = sub.get_one::<String>("username").cloned().unwrap_or_else(|| "admin".into());
    let password = if let Some(p) = sub.get_one::<PathBuf>("password-file") {
        std::fs::read_to_string(p).map_err(|e| ClientError::Input(format!("{}: {e}", p.display())))?
    } else if sub.get_flag("password-stdin") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| ClientError::Input(format!("standard input: {e}")))?;
        s
    } else if let Ok(p) = std::env::var("PLINTH_PASSWORD") {
        p
    } else {
        return Err(ClientError::Input(
            "give the password with --password-file FILE, --password-stdin or PLINTH_PASSWORD".into(),
        ));
    };
    let password = password.trim_end_matches(['\n', '\r']);
    if let Some(ca) = global.get_one::<PathBuf>("ca-cert") {
        cfg.ca_cert = Some(std::path::absolute(ca).map_err(|e| ClientError::Input(format!("{}: {e}", ca.display())))?);
    }
    if let Some(e) = global.get_one::<String>("endpoint") {
        cfg.endpoint = Some(e.clone());
    }
    cfg.token = None;
    let c = client(global, &cfg, false)?;
    let reply = c.login(&username, password, sub.get_one::<u64>("ttl").copied()).await?;
    let token = reply
        .get("token")
        .and_then(Value::as_str)
        .ok_or_else(|| ClientError::Input("the server sent no token".into()))?;
    cfg.token = Some(token.to_owned());
    cfg.endpoint = Some(c.endpoint().to_owned());
    let path = config::save(&cfg)?;
    let expires = reply.get("expires_at").and_then(Value::as_str).unwrap_or("?");
    Ok(format!("logged in to {} as {username}; token saved to {} (expires {expires})\n", c.endpoint(), path.display()))
}

async fn follow_events(c: &Client, query: &str, count: Option<u64>) -> Result<String, ClientError> {
    use futures_util::StreamExt;
    let resp = c.events(query).await?;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut seen = 0u64;
    let mut stdout = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ClientError::Connect { endpoint: c.endpoint().into(), message: e.to_string() })?;
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(pos) = buf.find('\n') {
            let line: String = buf.drain(..=pos).collect();
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                let _ = writeln!(stdout, "{}", data.trim_start());
                let _ = stdout.flush();
                seen += 1;
                if count.is_some_and(|n| seen >= n) {
                    return Ok(String::new());
                }
            }
        }
    }
    Ok(String::new())
}

async fn object_command(
    c: &Client,
    kind: Kind,
    action: &str,
    m: &ArgMatches,
    format: Format,
) -> Result<String, ClientError> {
    let base = format!("/api/v1/{}", kind.plural());
    let key_path = || m.get_one::<String>("key").map(|k| format!("{base}/{}", encode_key(k))).unwrap_or_default();
    let if_match = || m.try_get_one::<u64>("if-match").ok().flatten().copied();
    match action {
        "list" => {
            let mut params: Vec<String> = Vec::new();
            for f in m.get_many::<String>("filter").into_iter().flatten() {
                let (k, v) =
                    f.split_once('=').ok_or_else(|| ClientError::Input(format!("filter `{f}` is not FIELD=VALUE")))?;
                params.push(format!("{}={}", encode_key(k), encode_key(v)));
            }
            let want = m.get_one::<usize>("limit").copied();
            let mut items = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = want.map_or(1000, |w| (w - items.len()).clamp(1, 1000));
                let mut q = params.clone();
                q.push(format!("limit={page}"));
                if let Some(a) = &after {
                    q.push(format!("after={}", encode_key(a)));
                }
                let reply = c.call(Method::GET, &format!("{base}?{}", q.join("&")), None, None).await?;
                if let Some(Value::Array(batch)) = reply.body.get("items") {
                    items.extend(batch.iter().cloned());
                }
                after = reply.body.get("next").and_then(Value::as_str).map(str::to_owned);
                if after.is_none() || want.is_some_and(|w| items.len() >= w) {
                    break;
                }
            }
            Ok(output::list(kind, &items, format))
        }
        "show" => Ok(output::one(&c.call(Method::GET, &key_path(), None, None).await?.body, format)),
        "params" => {
            let explain = m.get_flag("explain");
            let path = format!("{}/params{}", key_path(), if explain { "?explain=true" } else { "" });
            let body = c.call(Method::GET, &path, None, None).await?.body;
            Ok(match (format, explain) {
                (Format::Table, true) => {
                    let rows: Vec<Value> = body
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(name, r)| {
                            let shadows: Vec<String> = r["shadows"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|s| format!("{}={}", output::layer(&s["source"]), output::cell(&s["value"])))
                                .collect();
                            serde_json::json!({"name": name, "value": r["value"], "source": output::layer(&r["source"]), "shadows": shadows.join("; ")})
                        })
                        .collect();
                    output::table(&["name", "value", "source", "shadows"], &rows)
                }
                (Format::Table, false) => {
                    let rows: Vec<Value> = body
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(n, v)| serde_json::json!({"name": n, "value": v}))
                        .collect();
                    output::table(&["name", "value"], &rows)
                }
                (other, _) => output::one(&body, other),
            })
        }
        "create" => Ok(output::one(&c.call(Method::POST, &base, Some(&read_body(m)?), None).await?.body, format)),
        "update" | "patch" => {
            let method = if action == "update" { Method::PUT } else { Method::PATCH };
            let overriding = m.try_get_one::<bool>("override").ok().flatten().copied().unwrap_or(false);
            let path = if overriding { format!("{}?override=true", key_path()) } else { key_path() };
            Ok(output::one(&c.call(method, &path, Some(&read_body(m)?), if_match()).await?.body, format))
        }
        "delete" => {
            c.call(Method::DELETE, &key_path(), None, if_match()).await?;
            Ok(format!(
                "deleted {} {}\n",
                kind.plural(),
                m.get_one::<String>("key").map(String::as_str).unwrap_or_default()
            ))
        }
        "import-iso" => import_iso(c, m).await,
        "workflow" => {
            let wf = m.get_one::<String>("workflow").cloned().unwrap_or_default();
            let body = serde_json::json!({"workflow": wf});
            Ok(output::one(
                &c.call(Method::POST, &format!("{}/workflow", key_path()), Some(&body), None).await?.body,
                format,
            ))
        }
        "resume" => {
            Ok(output::one(&c.call(Method::POST, &format!("{}/resume", key_path()), None, None).await?.body, format))
        }
        "log" => c.text(&format!("{}/log", key_path())).await,
        "timeline" => {
            let reply = c.call(Method::GET, &format!("{}/timeline", key_path()), None, None).await?;
            let items = reply.body.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            Ok(match format {
                Format::Table => output::table(&["at", "service", "mac", "address", "detail"], &items),
                other => output::one(&Value::Array(items), other),
            })
        }
        other => Err(ClientError::Input(format!("unknown action `{other}`"))),
    }
}

/// `plinth bootenvs import-iso NAME IMAGE`.
async fn import_iso(c: &Client, m: &ArgMatches) -> Result<String, ClientError> {
    let name = m.get_one::<String>("key").cloned().unwrap_or_default();
    let image = m.get_one::<PathBuf>("image").cloned().unwrap_or_default();
    let path = format!("/api/v1/bootenvs/{}", encode_key(&name));
    let bootenv: plinth_model::BootEnv = plinth_model::decode(c.call(Method::GET, &path, None, None).await?.body)
        .map_err(|e| ClientError::Input(format!("the server sent an unreadable bootenv: {e}")))?;
    let source = bootenv.source.clone();
    let expected = m
        .get_one::<String>("sha256")
        .cloned()
        .or_else(|| source.as_ref().map(|s| s.sha256.clone()).filter(|s| !s.is_empty()))
        .ok_or_else(|| {
            ClientError::Input(format!(
                "bootenv `{name}` pins no SHA-256 for its image; pass --sha256 with the value from the distribution's checksum file (SHA256SUMS)"
            ))
        })?;
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ClientError::Input(format!("--sha256 `{expected}` is not 64 hex digits")));
    }
    if !image.is_file() {
        return Err(ClientError::Input(format!("{} is not a file", image.display())));
    }
    let root = m.get_one::<PathBuf>("file-root").cloned().unwrap_or_else(|| {
        m.get_one::<PathBuf>("data-dir").cloned().unwrap_or_else(|| PathBuf::from("./plinth-data")).join("files")
    });
    let dest = root.join(&name);
    let keep = m.get_flag("keep-image") || source.as_ref().is_some_and(|s| s.keep_image);
    let file_name = source
        .as_ref()
        .map(|s| s.file.clone())
        .filter(|f| !f.is_empty() && !f.contains('/'))
        .or_else(|| image.file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "image.iso".into());
    let (img, d, f) = (image.clone(), dest.clone(), file_name.clone());
    let summary = tokio::task::spawn_blocking(move || -> Result<plinth_iso::Summary, String> {
        let summary = plinth_iso::import(&img, &expected, &d).map_err(|e| e.to_string())?;
        if keep {
            let target = d.join(&f);
            let same =
                std::fs::metadata(&target).ok().map(|m| m.len()) == std::fs::metadata(&img).ok().map(|m| m.len());
            if !same {
                let tmp = d.join(format!(".{f}.plinth-tmp"));
                std::fs::copy(&img, &tmp).map_err(|e| format!("cannot copy the image: {e}"))?;
                std::fs::rename(&tmp, &target).map_err(|e| format!("cannot keep the image: {e}"))?;
            }
        }
        Ok(summary)
    })
    .await
    .map_err(|e| ClientError::Local(e.to_string()))?
    .map_err(ClientError::Local)?;

    // What the bootenv boots must now be in the file root, for at least one
    // architecture; report the rest.
    let mut sets = vec![("default".to_owned(), bootenv.kernel.clone(), bootenv.initrds.clone())];
    for v in &bootenv.variants {
        sets.push((
            format!("{:?}/{:?}", v.arch, v.firmware).to_lowercase(),
            v.kernel.clone().or_else(|| bootenv.kernel.clone()),
            v.initrds.clone().unwrap_or_else(|| bootenv.initrds.clone()),
        ));
    }
    let mut ready = Vec::new();
    let mut lacking = Vec::new();
    for (label, kernel, initrds) in sets {
        let missing: Vec<String> = kernel.into_iter().chain(initrds).filter(|p| !root.join(p).is_file()).collect();
        if missing.is_empty() {
            ready.push(label);
        } else {
            lacking.push(format!("{label}: {}", missing.join(", ")));
        }
    }
    let counts = format!(
        "{} files written, {} already in place, {} symbolic links skipped",
        summary.written, summary.unchanged, summary.symlinks
    );
    if ready.is_empty() {
        return Err(ClientError::Local(format!(
            "extracted {} into {} ({counts}), but the image lacks what bootenv `{name}` boots ({}); is it the right image?",
            image.display(),
            dest.display(),
            lacking.join("; ")
        )));
    }
    let pinned =
        source.as_ref().is_some_and(|s| s.sha256 == summary.sha256 && s.keep_image == keep && s.file == file_name);
    // Pinning the image is the site's change: on a content pack's bootenv
    // it makes the bootenv the site's override (which upgrades then keep).
    let from_pack = bootenv.meta.get("pack").cloned();
    if !pinned {
        let patch = serde_json::json!({"source": {"file": file_name, "sha256": summary.sha256, "keep_image": keep}});
        let target = if from_pack.is_some() { format!("{path}?override=true") } else { path.clone() };
        c.call(Method::PATCH, &target, Some(&patch), None).await?;
    }
    let mut out =
        format!("imported {} into {}: {counts}\nready: {}\n", image.display(), dest.display(), ready.join(", "));
    if let (false, Some(pack)) = (pinned, &from_pack) {
        out.push_str(&format!("bootenv `{name}` now pins this image as the site's override of pack `{pack}`\n"));
    }
    if !lacking.is_empty() {
        out.push_str(&format!("not in this image: {}\n", lacking.join("; ")));
    }
    Ok(out)
}

/// `--override`: change an object a content pack installed, as the site's override.
fn override_arg() -> Arg {
    Arg::new("override")
        .long("override")
        .action(ArgAction::SetTrue)
        .help("Change an object a content pack installed, making it the site's override (upgrades keep it)")
}

/// Writes `pack` out as a directory and says so.
fn write_pack(pack: &plinth_content::pack::Pack, dir: &str, what: &str) -> Result<String, ClientError> {
    pack.write_dir(std::path::Path::new(dir)).map_err(|e| ClientError::Local(format!("cannot write {dir}: {e}")))?;
    Ok(format!(
        "wrote {what}{} {} ({} objects) to {dir}\n",
        pack.manifest.name,
        pack.manifest.version,
        pack.objects.len()
    ))
}

/// Reads a pack from a directory or a bundle file; every problem listed.
fn load_pack(src: &str) -> Result<plinth_content::pack::Pack, ClientError> {
    let path = std::path::Path::new(src);
    let loaded = if path.is_dir() {
        plinth_content::pack::load_dir(path)
    } else {
        let bytes = std::fs::read(path).map_err(|e| ClientError::Input(format!("cannot read {src}: {e}")))?;
        plinth_content::pack::Pack::from_bytes(&bytes)
    };
    loaded.map_err(|e| ClientError::Input(e.to_string()))
}

/// A plan for people: what changes, then the errors.
fn plan_text(plan: &Value, diffs: bool) -> String {
    let mut out = format!(
        "pack {}: {} -> {}\n",
        plan["pack"].as_str().unwrap_or_default(),
        plan["from"].as_str().unwrap_or("(not installed)"),
        plan["to"].as_str().unwrap_or("(removed)")
    );
    for o in plan["objects"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<14} {} {}\n",
            o["change"].as_str().unwrap_or_default(),
            o["kind"].as_str().unwrap_or_default(),
            o["key"].as_str().unwrap_or_default()
        ));
    }
    let machines = plan["machines"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!(
        "machines: {} checked, {} change, {} kept on another version\n",
        plan["machines_checked"],
        machines.len(),
        plan["pinned"]
    ));
    for m in &machines {
        let files: Vec<&str> = m["files"].as_array().into_iter().flatten().filter_map(|f| f["file"].as_str()).collect();
        out.push_str(&format!(
            "  {} ({}){}: {}\n",
            m["name"].as_str().unwrap_or_default(),
            m["id"].as_str().unwrap_or_default(),
            if m["workflow_affected"] == true { " [running workflow changes]" } else { "" },
            files.join(", ")
        ));
        if diffs {
            for f in m["files"].as_array().into_iter().flatten() {
                out.push_str(f["diff"].as_str().unwrap_or_default());
            }
        }
    }
    for w in plan["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("warning: {}\n", w.as_str().unwrap_or_default()));
    }
    for e in plan["errors"].as_array().into_iter().flatten() {
        out.push_str(&format!("error: {}\n", e.as_str().unwrap_or_default()));
    }
    out
}

async fn content(
    action: &str,
    m: &ArgMatches,
    global: &ArgMatches,
    cfg: &config::Config,
    format: Format,
) -> Result<String, ClientError> {
    let arg = |n: &str| m.get_one::<String>(n).cloned().unwrap_or_default();
    let force =
        if m.try_get_one::<bool>("force").ok().flatten().copied().unwrap_or(false) { "?force=true" } else { "" };
    let show = |reply: Value, diffs: bool| match format {
        Format::Table => plan_text(&reply, diffs),
        other => output::one(&reply, other),
    };
    match action {
        "bundle" => {
            let pack = load_pack(&arg("dir"))?;
            let text =
                serde_json::to_string_pretty(&pack.to_bundle()).map_err(|e| ClientError::Local(e.to_string()))? + "\n";
            match m.get_one::<String>("out") {
                Some(out) => {
                    std::fs::write(out, text).map_err(|e| ClientError::Local(format!("cannot write {out}: {e}")))?;
                    Ok(format!(
                        "bundled {} {} ({} objects) into {out}\n",
                        pack.manifest.name,
                        pack.manifest.version,
                        pack.objects.len()
                    ))
                }
                None => Ok(text),
            }
        }
        "unbundle" => write_pack(&load_pack(&arg("bundle"))?, &arg("dir"), ""),
        "validate" => {
            let pack = load_pack(&arg("pack"))?;
            Ok(format!(
                "{} {}: {} objects, no problems\n",
                pack.manifest.name,
                pack.manifest.version,
                pack.objects.len()
            ))
        }
        "plan" | "install" => {
            let pack = load_pack(&arg("pack"))?;
            let c = client(global, cfg, true)?;
            let mut path = if action == "plan" {
                "/api/v1/contents/plan".to_owned()
            } else {
                format!("/api/v1/contents/install{force}")
            };
            if let Some(c) = m.get_one::<String>("canary") {
                path.push(if path.contains('?') { '&' } else { '?' });
                path.push_str(&format!("canary={}", encode_key(c)));
            }
            let reply = c.call(Method::POST, &path, Some(&pack.to_bundle()), None).await?;
            let diffs = m.try_get_one::<bool>("diffs").ok().flatten().copied().unwrap_or(false);
            Ok(show(reply.body, diffs))
        }
        "export" => {
            let c = client(global, cfg, true)?;
            let path = format!(
                "/api/v1/contents/export?name={}&version={}",
                encode_key(&arg("name")),
                encode_key(&arg("pack-version"))
            );
            let reply = c.call(Method::GET, &path, None, None).await?;
            let pack =
                plinth_content::pack::Pack::from_bundle(&reply.body).map_err(|e| ClientError::Local(e.to_string()))?;
            write_pack(&pack, &arg("dir"), "the site layer as ")
        }
        "rollback" | "promote" => {
            let c = client(global, cfg, true)?;
            let path = format!("/api/v1/contents/{}/{action}{force}", encode_key(&arg("name")));
            let reply = c.call(Method::POST, &path, None, None).await?;
            Ok(show(reply.body, false))
        }
        "remove" => {
            let c = client(global, cfg, true)?;
            let reply = c
                .call(Method::DELETE, &format!("/api/v1/contents/{}{force}", encode_key(&arg("name"))), None, None)
                .await?;
            Ok(show(reply.body, false))
        }
        other => Err(ClientError::Input(format!("unknown content action `{other}`"))),
    }
}
