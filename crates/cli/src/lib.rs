//! Plinth's command-line client.
//!
//! `plinth <kind> list|show|create|update|patch|delete` for every kind, plus
//! login, logout, events, boot-events, audit, join-tokens, the machine
//! workflow commands (workflow, resume, timeline, params), jobs' logs,
//! `bootenvs import-iso`, `content …` and completions. It talks to the API
//! and never opens the store; `content validate/bundle/unbundle` and
//! `completions` work without a server, and `bootenvs import-iso` extracts
//! into the local file root. The endpoint, token and CA certificate come
//! from flags, then `PLINTH_ENDPOINT` / `PLINTH_TOKEN` / `PLINTH_CA_CERT`,
//! then the file `plinth login` wrote.
#![forbid(unsafe_code)]

mod args;
mod client;
pub mod config;
mod events;
mod images;
mod iso;
mod objects;
pub mod output;
mod packs;
mod power;
mod session;

pub use args::augment;
pub use client::{Client, ClientError, Reply};

use clap::{ArgMatches, Command};
use output::Format;
use plinth_model::Kind;
use std::io::Write;

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

/// One dispatch: each subcommand to the module that owns it.
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
        "login" => session::login(sub, global, cfg).await,
        "logout" => session::logout(global, cfg).await,
        "join-tokens" => session::join_tokens(sub, global, &cfg, format).await,
        "boot-events" => events::boot_events(sub, global, &cfg, format).await,
        "audit" => events::audit(sub, global, &cfg, format).await,
        "events" => events::events(sub, global, &cfg).await,
        "content" => {
            let Some((action, m)) = sub.subcommand() else {
                return Err(ClientError::Input("which content action?".into()));
            };
            packs::content(action, m, global, &cfg, format).await
        }
        plural => {
            let kind =
                Kind::from_plural(plural).ok_or_else(|| ClientError::Input(format!("unknown command `{plural}`")))?;
            let c = session::client(global, &cfg, true)?;
            let (action, m) = sub.subcommand().ok_or_else(|| ClientError::Input("which action?".into()))?;
            objects::object_command(&c, kind, action, m, format).await
        }
    }
}
