//! The `plinth` binary: `plinth serve` runs the server; `secrets`,
//! `bootloaders`, `discovery` and `lab` work on the local data dir, file
//! root or host; every other subcommand is the CLI client (see the
//! `plinth-cli` crate).
#![forbid(unsafe_code)]

mod args;
mod bootloaders;
mod debpkg;
mod discovery;
mod metrics;
mod render_worker;
mod secrets;
mod serve;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    // A debugging render's worker process, started by the server itself.
    if std::env::args_os().nth(1).is_some_and(|a| a == plinth_api::sandbox::WORKER_ARG) {
        return render_worker::run();
    }
    let mut root = args::command();
    let matches = match root.try_get_matches_from_mut(std::env::args_os()) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let Some((name, sub)) = matches.subcommand() else { return ExitCode::from(2) };
    // One dispatch: each local command gives the text to print.
    let action = sub.subcommand();
    let result: anyhow::Result<String> = match (name, action) {
        ("serve", _) => {
            return match serve::Config::from_matches(sub).and_then(|c| runtime.block_on(serve::run(c))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
        ("bootloaders", Some((_, m))) => bootloaders::run(m).map(|()| String::new()),
        ("discovery", Some((_, m))) => discovery::run(m).map(|built| {
            format!(
                "discovery image for {} (kernel {}) built in {}/ with modules: {}\n",
                built.arch.as_str(),
                built.kernel_version.as_deref().unwrap_or("?"),
                built.dir,
                built.modules.join(" ")
            ) + &built.iso.map(|p| format!("virtual media image: {}\n", p.display())).unwrap_or_default()
        }),
        ("secrets", Some((action, m))) => secrets::run(&runtime, action, m).map(|text| format!("{text}\n")),
        ("lab", Some(("up", m))) => plinth::lab::up(&plinth::lab::Options {
            dir: m.get_one::<PathBuf>("dir").cloned().unwrap_or_default(),
            name: m.get_one::<String>("name").cloned().unwrap_or_default(),
            machines: m.get_one::<usize>("machines").copied().unwrap_or(1),
            firmware: m.get_one::<String>("firmware").cloned().unwrap_or_default(),
            memory_mib: m.get_one::<u32>("memory").copied().unwrap_or(768),
            disk_gib: m.get_one::<u64>("disk").copied().unwrap_or(4),
            net: m.get_one::<String>("net").cloned().unwrap_or_default(),
        })
        .map_err(anyhow::Error::from),
        ("lab", Some(("down", m))) => {
            plinth::lab::down(&m.get_one::<PathBuf>("dir").cloned().unwrap_or_default()).map_err(anyhow::Error::from)
        }
        ("users", Some(("reset-password", m))) => users::reset_password(&runtime, m),
        ("bootloaders" | "discovery" | "secrets" | "lab", _) => return ExitCode::from(2),
        _ => return ExitCode::from(runtime.block_on(plinth_cli::run(name, sub, &matches, &mut root))),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
