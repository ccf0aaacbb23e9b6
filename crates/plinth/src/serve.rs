//! `plinth serve`: opens the store, prepares it on first start, sets up TLS
//! and runs the listeners until SIGTERM or SIGINT.

use anyhow::{Context, Result};
use clap::ArgMatches;
use plinth_api::AppState;
use plinth_store::SqliteStore;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PLINTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

/// The keyring file in the data dir (see `plinth_secrets`).
pub const KEYRING_FILE: &str = "secret.keys";

/// Runs the server.
pub async fn run(m: &ArgMatches) -> Result<()> {
    init_logging(m.get_one::<String>("log-format").map(String::as_str).unwrap_or("text"));
    let data_dir = m.get_one::<PathBuf>("data-dir").cloned().unwrap_or_else(|| PathBuf::from("./plinth-data"));
    if !data_dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        // The data dir holds the store, keys and the initial password: owner only.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    }
    let store = SqliteStore::open(&data_dir.join("plinth.db")).context("cannot open the store")?;
    let store: Arc<dyn plinth_store::Store> = Arc::new(store);
    plinth_api::bootstrap(store.as_ref(), &data_dir, std::env::var("PLINTH_ADMIN_PASSWORD").ok())
        .await
        .context("cannot prepare the store")?;
    // Secure param values are sealed under this keyring; values sealed under
    // an older key (after `plinth secrets rotate`) are re-sealed now.
    let keyring = Arc::new(
        plinth_secrets::Keyring::load_or_create(&data_dir.join(KEYRING_FILE)).context("cannot load the secret keys")?,
    );
    let resealed = plinth_api::reseal_all(store.as_ref(), &keyring).await.context("cannot re-seal secure values")?;
    if resealed > 0 {
        tracing::info!(values = resealed, key = %keyring.key_ids()[0], "sealed secure values under the current key");
    }
    match plinth_content::install_default(store.as_ref()).await {
        Ok(Some(plan)) => tracing::info!(
            pack = plinth_content::DEFAULT_PACK,
            from = plan.from.as_deref().unwrap_or("none"),
            to = plan.to.as_deref().unwrap_or_default(),
            objects = plan.objects.len(),
            "installed the built-in content pack"
        ),
        Ok(None) => {}
        // The server starts with what it has; the plan says what is in the way.
        Err(plinth_content::ContentError::Refused(errors)) => {
            for e in errors {
                tracing::warn!(pack = plinth_content::DEFAULT_PACK, problem = %e, "built-in content pack not upgraded");
            }
        }
        Err(e) => return Err(anyhow::anyhow!(e)).context("cannot install the built-in content"),
    }

    // Breaches of the integrity rules a store from an older Plinth may
    // hold: writes refuse to add more; an operator must mend these.
    match store.integrity().await {
        Ok(problems) => {
            for p in &problems {
                tracing::warn!(problem = %p, "stored data breaks an integrity rule; fix it through the API");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot check the store's integrity"),
    }

    let api_addr: std::net::SocketAddr = m
        .get_one::<String>("api-addr")
        .map(String::as_str)
        .unwrap_or("0.0.0.0:8092")
        .parse()
        .context("--api-addr must be IP:PORT, e.g. 0.0.0.0:8092")?;
    // The CA that machines' agents are given in their boot files (only
    // with the local CA; a site's own certificate chains to a CA its
    // machines trust already).
    let mut agent_ca = String::new();
    let (cert, key) = match (m.get_one::<PathBuf>("tls-cert"), m.get_one::<PathBuf>("tls-key")) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            names.extend(hostname());
            if api_addr.ip().is_unspecified() {
                // Listening everywhere: machines reach the API on any of
                // this host's addresses.
                for iface in if_addrs::get_if_addrs().unwrap_or_default() {
                    if !iface.is_loopback() {
                        names.push(iface.ip().to_string());
                    }
                }
            } else {
                names.push(api_addr.ip().to_string());
            }
            names.extend(m.get_many::<String>("tls-san").into_iter().flatten().cloned());
            names.sort();
            names.dedup();
            let files = plinth_api::tls::ensure_local_ca(&data_dir, &names).context("cannot set up TLS")?;
            agent_ca = std::fs::read_to_string(&files.ca_cert).unwrap_or_default();
            (files.cert, files.key)
        }
    };
    let tls = plinth_api::tls::server_config(&cert, &key).context("cannot load the TLS certificate")?;
    let listener =
        std::net::TcpListener::bind(api_addr).with_context(|| format!("cannot listen on {api_addr} (--api-addr)"))?;
    let bound = listener.local_addr()?;
    let state = AppState {
        agent_ca: agent_ca.clone(),
        store,
        default_token_ttl: Duration::from_secs(m.get_one::<u64>("token-ttl").copied().unwrap_or(86_400)),
        keyring: keyring.clone(),
        logins: Default::default(),
    };
    tracing::info!(service = "api", url = %format!("https://{bound}"), "listening");

    let file_root = m.get_one::<PathBuf>("file-root").cloned().unwrap_or_else(|| data_dir.join("files"));
    let file_root = plinth_boot::files::FileRoot::new(&file_root)
        .with_context(|| format!("cannot use file root {}", file_root.display()))?;
    tracing::info!(path = %file_root.path().display(), "serving boot files from the file root");

    let boot_log = plinth_boot::events::BootLog::start(state.store.clone());
    let generated: Arc<dyn plinth_boot::generated::Generated> = Arc::new(plinth_boot::generated::RenderedFiles::new(
        state.store.clone(),
        file_root.clone(),
        bound.port(),
        Duration::from_secs(m.get_one::<u64>("machine-token-ttl").copied().unwrap_or(3600)),
        agent_ca,
        keyring,
    ));

    // One shutdown signal fans out to every listener.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    // Unusable tokens (expired, join tokens used up) are removed every 10 minutes.
    let sweep_store = state.store.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(600));
        loop {
            every.tick().await;
            match plinth_api::sweep_tokens(sweep_store.as_ref()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(tokens = n, "removed expired and used-up tokens"),
                Err(e) => tracing::warn!(error = %e, "cannot sweep tokens"),
            }
        }
    });

    let mut http_port = 8091;
    if let Some(addr) = optional_addr(m, "http-addr")? {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                http_port = l.local_addr()?.port();
                tracing::info!(service = "http", url = %format!("http://{}", l.local_addr()?), "listening");
                let (root, gen_files, log, stop) = (file_root.clone(), generated.clone(), boot_log.clone(), stopped());
                tasks.spawn(async move {
                    plinth_boot::http::serve(l, root, gen_files, log, stop).await.context("boot HTTP server failed")
                });
            }
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot listen for boot HTTP (--http-addr); continuing without it")
            }
        }
    }
    if let Some(addr) = optional_addr(m, "tftp-addr")? {
        match tokio::net::UdpSocket::bind(addr).await {
            Ok(s) => {
                tracing::info!(service = "tftp", url = %format!("tftp://{}", s.local_addr()?), "listening");
                let (root, gen_files, log, stop) = (file_root.clone(), generated.clone(), boot_log.clone(), stopped());
                let tftp_config = plinth_boot::tftp::TftpConfig { http_port, ..Default::default() };
                tasks.spawn(async move {
                    plinth_boot::tftp::serve(s, root, gen_files, tftp_config, log, stop)
                        .await
                        .context("TFTP server failed")
                });
            }
            Err(e) => {
                let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    " (ports below 1024 need root or CAP_NET_BIND_SERVICE; or pass --tftp-addr 0.0.0.0:6969)"
                } else {
                    ""
                };
                tracing::error!(%addr, error = %e, "cannot listen for TFTP{hint}; continuing without it");
            }
        }
    }
    match m.get_one::<String>("dhcp-port").map(String::as_str) {
        None | Some("off") => tracing::info!("dhcp: disabled (--dhcp-port off)"),
        Some(p) => {
            let server_port: u16 =
                p.parse().with_context(|| format!("--dhcp-port must be a port number or `off`, got `{p}`"))?;
            let config = plinth_boot::dhcp::DhcpConfig { server_port, http_port, ..Default::default() };
            let (store, log, stop) = (state.store.clone(), boot_log.clone(), stopped());
            tasks.spawn(async move {
                plinth_boot::dhcp::serve(store, config, log, stop).await;
                Ok(())
            });
        }
    }
    let api_stop = stopped();
    tasks.spawn(async move { plinth_api::serve(listener, tls, state, api_stop).await.context("API server failed") });
    tokio::select! {
        _ = shutdown_signal() => {}
        Some(r) = tasks.join_next() => {
            // A listener ended on its own: that is a failure; stop the rest.
            let _ = stop_tx.send(true);
            r.context("listener task")??;
        }
    }
    let _ = stop_tx.send(true);
    while let Some(r) = tasks.join_next().await {
        r.context("listener task")??;
    }
    tracing::info!("stopped");
    Ok(())
}

/// A listen address flag, where `off` disables the listener.
fn optional_addr(m: &ArgMatches, name: &str) -> Result<Option<std::net::SocketAddr>> {
    match m.get_one::<String>(name).map(String::as_str) {
        None | Some("off") | Some("") => Ok(None),
        Some(a) => a.parse().map(Some).with_context(|| format!("--{name} must be IP:PORT or `off`, got `{a}`")),
    }
}
