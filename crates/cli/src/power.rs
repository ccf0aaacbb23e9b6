//! `plinth machines power|boot-once|rebuild|bmc|enroll`: machines' power
//! through their BMCs, one machine or every machine a filter selects (with
//! bounded concurrency, a line per machine). A BMC password is read from a
//! file or standard input, never from the command line.

use crate::objects::encode_key;
use crate::output::{self, Format};
use crate::{Client, ClientError};
use clap::{Arg, ArgAction, ArgMatches, Command, value_parser};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use std::io::Read;
use std::path::PathBuf;

/// The power subcommands of `plinth machines`.
pub(crate) fn commands(cmd: Command) -> Command {
    let filter = || {
        Arg::new("filter")
            .long("filter")
            .short('F')
            .action(ArgAction::Append)
            .help("Every machine with FIELD=VALUE (repeatable) instead of one, e.g. profiles=rack-7")
    };
    let concurrency = || {
        Arg::new("concurrency")
            .long("concurrency")
            .value_parser(value_parser!(usize))
            .default_value("8")
            .help("With --filter: machines at once")
    };
    cmd.subcommand(
        Command::new("power")
            .about("Power through the machine's BMC: status, on, off, cycle, reset, soft-off")
            .arg(
                Arg::new("args")
                    .num_args(1..=2)
                    .required(true)
                    .value_names(["MACHINE", "ACTION"])
                    .help("MACHINE ACTION, or ACTION with --filter"),
            )
            .arg(filter())
            .arg(concurrency()),
    )
    .subcommand(
        Command::new("boot-once")
            .about("Boot a device once, at the machine's next boot: pxe, disk or cd")
            .arg(Arg::new("args").num_args(1..=2).required(true).value_names(["MACHINE", "DEVICE"]))
            .arg(filter())
            .arg(concurrency())
            .arg(
                Arg::new("uefi")
                    .long("uefi")
                    .action(ArgAction::SetTrue)
                    .help("UEFI boot (default: as Plinth saw it boot)"),
            )
            .arg(Arg::new("legacy").long("legacy").action(ArgAction::SetTrue).conflicts_with("uefi").help("BIOS boot")),
    )
    .subcommand(
        Command::new("rebuild")
            .about(
                "Reprovision with nobody at the machine: assign the workflow, boot once from the network, power-cycle",
            )
            .arg(Arg::new("key").help("The machine (or --filter)"))
            .arg(Arg::new("workflow").long("workflow").short('w').help("The workflow [default: the machine's own]"))
            .arg(filter())
            .arg(concurrency()),
    )
    .subcommand(
        Command::new("boot-media")
            .about("Boot the machine from the discovery image over Redfish virtual media (no DHCP boot options needed)")
            .arg(Arg::new("key").required(true).help("The machine"))
            .arg(Arg::new("eject").long("eject").action(ArgAction::SetTrue).help("Eject the media instead")),
    )
    .subcommand(bmc_args(
        Command::new("bmc")
            .about("Give a machine its BMC (the password from a file or standard input), or --remove it")
            .arg(Arg::new("key").required(true).help("The machine"))
            .arg(Arg::new("remove").long("remove").action(ArgAction::SetTrue).help("Forget the machine's BMC")),
        false,
    ))
    .subcommand(bmc_args(
        Command::new("enroll")
            .about("Create (or match) a machine from what its Redfish BMC says: system UUID, serial, NIC MACs")
            .arg(Arg::new("name").long("name").help("The new machine's name [default: from its first MAC]"))
            .arg(
                Arg::new("profile")
                    .long("profile")
                    .action(ArgAction::Append)
                    .help("Profile of a new machine (repeatable)"),
            )
            .arg(Arg::new("workflow").long("workflow").help("Workflow the machine starts")),
        true,
    ))
}

fn bmc_args(cmd: Command, enroll: bool) -> Command {
    let driver = Arg::new("driver").long("driver").value_parser(["ipmi", "redfish"]).help("ipmi or redfish");
    let required = |a: Arg| if enroll { a.required(true) } else { a.required_unless_present("remove") };
    let driver = if enroll { driver.default_value("redfish") } else { driver.required_unless_present("remove") };
    cmd.arg(driver)
        .arg(required(Arg::new("address").long("address").help("host[:port], or (Redfish) https://host[:port]")))
        .arg(required(Arg::new("username").long("username").short('u').help("The BMC user")))
        .arg(
            Arg::new("password-file")
                .long("password-file")
                .value_parser(value_parser!(PathBuf))
                .help("A file whose first line is the BMC password"),
        )
        .arg(
            Arg::new("password-stdin")
                .long("password-stdin")
                .action(ArgAction::SetTrue)
                .conflicts_with("password-file")
                .help("Read the BMC password from standard input"),
        )
        .arg(
            Arg::new("cipher-suite")
                .long("cipher-suite")
                .value_parser(value_parser!(u8))
                .help("IPMI cipher suite [default: 3]"),
        )
        .arg(Arg::new("system").long("system").help("Redfish: the system's id or path, when the BMC has several"))
        .arg(
            Arg::new("bmc-ca-cert")
                .long("bmc-ca-cert")
                .value_parser(value_parser!(PathBuf))
                .help("Redfish: a CA (PEM) the BMC's certificate chains to"),
        )
        .arg(Arg::new("fingerprint").long("fingerprint").help("Redfish: the SHA-256 of the BMC's certificate (hex)"))
        .arg(
            Arg::new("insecure-tls")
                .long("insecure-tls")
                .action(ArgAction::SetTrue)
                .help("Redfish: accept any certificate, or plain http:// (lab gear only)"),
        )
}

/// The BMC object the flags describe.
fn bmc_body(m: &ArgMatches) -> Result<Value, ClientError> {
    let password = if let Some(p) = m.get_one::<PathBuf>("password-file") {
        let text = std::fs::read_to_string(p).map_err(|e| ClientError::Input(format!("{}: {e}", p.display())))?;
        Some(text.lines().next().unwrap_or_default().to_owned())
    } else if m.get_flag("password-stdin") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| ClientError::Input(format!("standard input: {e}")))?;
        Some(s.lines().next().unwrap_or_default().to_owned())
    } else {
        None
    };
    let mut bmc = json!({
        "driver": m.get_one::<String>("driver"),
        "address": m.get_one::<String>("address"),
        "username": m.get_one::<String>("username"),
    });
    if let Some(p) = password {
        bmc["password"] = json!(p);
    }
    if let Some(c) = m.get_one::<u8>("cipher-suite") {
        bmc["cipher_suite"] = json!(c);
    }
    if let Some(s) = m.get_one::<String>("system") {
        bmc["system"] = json!(s);
    }
    if let Some(p) = m.get_one::<PathBuf>("bmc-ca-cert") {
        let pem = std::fs::read_to_string(p).map_err(|e| ClientError::Input(format!("{}: {e}", p.display())))?;
        bmc["ca_pem"] = json!(pem);
    }
    if let Some(f) = m.get_one::<String>("fingerprint") {
        bmc["fingerprint"] = json!(f);
    }
    if m.get_flag("insecure-tls") {
        bmc["insecure_tls"] = json!(true);
    }
    Ok(bmc)
}

/// The machines a command is about: the one named, or every one the
/// filters select.
async fn targets(c: &Client, m: &ArgMatches, key: Option<&String>) -> Result<Vec<(String, String)>, ClientError> {
    let filters: Vec<&String> = m.get_many::<String>("filter").into_iter().flatten().collect();
    match (key, filters.is_empty()) {
        (Some(k), true) => Ok(vec![(k.clone(), k.clone())]),
        (Some(_), false) => Err(ClientError::Input("name a machine or give --filter, not both".into())),
        (None, true) => Err(ClientError::Input("name a machine, or select machines with --filter FIELD=VALUE".into())),
        (None, false) => {
            let mut q = Vec::new();
            for f in filters {
                let (k, v) =
                    f.split_once('=').ok_or_else(|| ClientError::Input(format!("filter `{f}` is not FIELD=VALUE")))?;
                q.push(format!("{}={}", encode_key(k), encode_key(v)));
            }
            let mut out = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut page = q.clone();
                page.push("limit=1000".into());
                if let Some(a) = &after {
                    page.push(format!("after={}", encode_key(a)));
                }
                let reply = c.call(Method::GET, &format!("/api/v1/machines?{}", page.join("&")), None, None).await?;
                for item in reply.body.get("items").and_then(Value::as_array).into_iter().flatten() {
                    if let (Some(id), Some(name)) = (item["id"].as_str(), item["name"].as_str()) {
                        out.push((id.to_owned(), name.to_owned()));
                    }
                }
                after = reply.body.get("next").and_then(Value::as_str).map(str::to_owned);
                if after.is_none() {
                    break;
                }
            }
            if out.is_empty() {
                return Err(ClientError::Input("no machine matches the filters".into()));
            }
            Ok(out)
        }
    }
}

/// Runs `call` for each target, `concurrency` at a time: one machine's
/// answer as it is, or a table of every machine's outcome (the command
/// fails when any did).
async fn each<F, Fut>(
    targets: Vec<(String, String)>,
    m: &ArgMatches,
    format: Format,
    call: F,
) -> Result<String, ClientError>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Value, ClientError>>,
{
    if targets.len() == 1 && m.get_many::<String>("filter").is_none() {
        let (id, _) = &targets[0];
        return Ok(output::one(&call(id.clone()).await?, format));
    }
    let n = m.get_one::<usize>("concurrency").copied().unwrap_or(8).max(1);
    let results: Vec<(String, String, Result<Value, ClientError>)> = futures_util::stream::iter(targets)
        .map(|(id, name)| {
            let fut = call(id.clone());
            async move { (id, name, fut.await) }
        })
        .buffer_unordered(n)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.2.is_err()).count();
    let rows: Vec<Value> = results
        .iter()
        .map(|(id, name, r)| match r {
            Ok(v) => {
                json!({"machine": id, "name": name, "result": "ok", "state": v.get("state"), "detail": v.get("error")})
            }
            Err(e) => json!({"machine": id, "name": name, "result": "failed", "detail": e.to_string()}),
        })
        .collect();
    let text = match format {
        Format::Table => output::table(&["name", "machine", "result", "state", "detail"], &rows),
        other => output::one(&Value::Array(rows), other),
    };
    if failed > 0 {
        print!("{text}");
        return Err(ClientError::Local(format!("{failed} of {} machines failed", results.len())));
    }
    Ok(text)
}

/// `plinth machines power|boot-once|rebuild|bmc|enroll`.
pub(crate) async fn command(c: &Client, action: &str, m: &ArgMatches, format: Format) -> Result<String, ClientError> {
    let path = |id: &str, route: &str| format!("/api/v1/machines/{}/{route}", encode_key(id));
    match action {
        "power" | "boot-once" => {
            let args: Vec<&String> = m.get_many::<String>("args").into_iter().flatten().collect();
            let (key, word) = match args.as_slice() {
                [k, w] => (Some(*k), (*w).clone()),
                [w] => (None, (*w).clone()),
                _ => return Err(ClientError::Input("give MACHINE and what to do".into())),
            };
            let targets = targets(c, m, key).await?;
            if action == "power" {
                const ACTIONS: [&str; 6] = ["status", "on", "off", "cycle", "reset", "soft-off"];
                if !ACTIONS.contains(&word.as_str()) {
                    return Err(ClientError::Input(format!("`{word}` is not one of {}", ACTIONS.join(", "))));
                }
                each(targets, m, format, |id| {
                    let (p, word) = (path(&id, "power"), word.clone());
                    async move {
                        let reply = if word == "status" {
                            c.call(Method::GET, &p, None, None).await?
                        } else {
                            c.call(Method::POST, &p, Some(&json!({"action": word})), None).await?
                        };
                        Ok(reply.body)
                    }
                })
                .await
            } else {
                if !["pxe", "disk", "cd"].contains(&word.as_str()) {
                    return Err(ClientError::Input(format!("`{word}` is not one of pxe, disk, cd")));
                }
                let mut body = json!({"device": word});
                if m.get_flag("uefi") {
                    body["uefi"] = json!(true);
                } else if m.get_flag("legacy") {
                    body["uefi"] = json!(false);
                }
                each(targets, m, format, |id| {
                    let (p, body) = (path(&id, "boot-once"), body.clone());
                    async move { Ok(c.call(Method::POST, &p, Some(&body), None).await?.body) }
                })
                .await
            }
        }
        "rebuild" => {
            let targets = targets(c, m, m.get_one::<String>("key")).await?;
            let body = match m.get_one::<String>("workflow") {
                Some(w) => json!({"workflow": w}),
                None => json!({}),
            };
            each(targets, m, format, |id| {
                let (p, body) = (path(&id, "rebuild"), body.clone());
                async move { Ok(c.call(Method::POST, &p, Some(&body), None).await?.body) }
            })
            .await
        }
        "boot-media" => {
            let key = m.get_one::<String>("key").cloned().unwrap_or_default();
            let body = json!({"eject": m.get_flag("eject")});
            Ok(output::one(&c.call(Method::POST, &path(&key, "boot-media"), Some(&body), None).await?.body, format))
        }
        "bmc" => {
            let key = m.get_one::<String>("key").cloned().unwrap_or_default();
            let bmc = if m.get_flag("remove") { Value::Null } else { bmc_body(m)? };
            let body = json!({"bmc": bmc});
            let reply =
                c.call(Method::PATCH, &format!("/api/v1/machines/{}", encode_key(&key)), Some(&body), None).await?;
            Ok(output::one(&reply.body, format))
        }
        "enroll" => {
            let mut body = json!({"bmc": bmc_body(m)?});
            if let Some(n) = m.get_one::<String>("name") {
                body["name"] = json!(n);
            }
            let profiles: Vec<&String> = m.get_many::<String>("profile").into_iter().flatten().collect();
            if !profiles.is_empty() {
                body["profiles"] = json!(profiles);
            }
            if let Some(w) = m.get_one::<String>("workflow") {
                body["workflow"] = json!(w);
            }
            Ok(output::one(&c.call(Method::POST, "/api/v1/machines/enroll", Some(&body), None).await?.body, format))
        }
        other => Err(ClientError::Input(format!("unknown action `{other}`"))),
    }
}
