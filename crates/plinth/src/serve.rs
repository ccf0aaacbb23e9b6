//! `plinth serve`: opens the store, prepares it on first start, sets up TLS
//! and runs the listeners until SIGTERM or SIGINT.

use anyhow::{Context, Result};
use clap::ArgMatches;
use plinth_api::AppState;
use plinth_store::SqliteStore;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

/// How `plinth serve` runs: its flags, parsed and checked once, before
/// anything is opened.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store, TLS material, keys and (by default) files live.
    pub data_dir: PathBuf,
    /// The HTTPS API's address.
    pub api_addr: SocketAddr,
    /// The boot HTTP server's address; `None` is off.
    pub http_addr: Option<SocketAddr>,
    /// The TFTP server's address; `None` is off.
    pub tftp_addr: Option<SocketAddr>,
    /// The metrics listener's address; `None` is off.
    pub metrics_addr: Option<SocketAddr>,
    /// Most TFTP transfers one client address may have at once.
    pub tftp_per_client: usize,
    /// The DHCP server port; `None` is off.
    pub dhcp_port: Option<u16>,
    /// The file root TFTP and HTTP serve.
    pub file_root: PathBuf,
    /// A certificate chain and key instead of the local CA's.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Extra names for the generated certificate.
    pub tls_sans: Vec<String>,
    /// Lifetime of tokens minted without an explicit one.
    pub token_ttl: Duration,
    /// Lifetime of the boot credentials boot files carry.
    pub machine_token_ttl: Duration,
    /// Longest a machine's session lasts.
    pub machine_session_max: Duration,
    /// Lifetime of metadata tokens.
    pub metadata_token_ttl: Duration,
    /// Most log one job may store, in bytes.
    pub job_log_max: u64,
    /// How BMCs are driven.
    pub power: plinth_api::power::PowerConfig,
    /// Bounds on the join tokens unknown machines' scripts carry.
    pub join_limits: plinth_boot::generated::JoinLimits,
    /// How long boot events are kept.
    pub boot_events_keep: Duration,
    /// Most boot events kept.
    pub boot_events_max: u64,
    /// The boot HTTP server's URL as machines reach it, when configured.
    pub boot_url: Option<String>,
    /// The API's URL as machines reach it, when configured.
    pub api_url: Option<String>,
    /// `text` or `json`.
    pub log_format: String,
}

impl Config {
    /// The configuration the flags (and their environment variables) give.
    pub fn from_matches(m: &ArgMatches) -> Result<Config> {
        let data_dir = m.get_one::<PathBuf>("data-dir").cloned().unwrap_or_else(|| PathBuf::from("./plinth-data"));
        let api_addr = m
            .get_one::<String>("api-addr")
            .map(String::as_str)
            .unwrap_or("0.0.0.0:8092")
            .parse()
            .context("--api-addr must be IP:PORT, e.g. 0.0.0.0:8092")?;
        let dhcp_port = match m.get_one::<String>("dhcp-port").map(String::as_str) {
            None | Some("off") => None,
            Some(p) => {
                Some(p.parse().with_context(|| format!("--dhcp-port must be a port number or `off`, got `{p}`"))?)
            }
        };
        let secs = |name: &str, default: u64| Duration::from_secs(m.get_one::<u64>(name).copied().unwrap_or(default));
        Ok(Config {
            file_root: m.get_one::<PathBuf>("file-root").cloned().unwrap_or_else(|| data_dir.join("files")),
            data_dir,
            api_addr,
            http_addr: optional_addr(m, "http-addr")?,
            tftp_addr: optional_addr(m, "tftp-addr")?,
            metrics_addr: optional_addr(m, "metrics-addr")?,
            tftp_per_client: m.get_one::<u32>("tftp-per-client").copied().unwrap_or(32) as usize,
            dhcp_port,
            tls: m.get_one::<PathBuf>("tls-cert").cloned().zip(m.get_one::<PathBuf>("tls-key").cloned()),
            tls_sans: m.get_many::<String>("tls-san").into_iter().flatten().cloned().collect(),
            token_ttl: secs("token-ttl", 86_400),
            machine_token_ttl: secs("machine-token-ttl", 900),
            machine_session_max: secs("machine-session-max", 30 * 86_400),
            metadata_token_ttl: secs("metadata-token-ttl", 86_400),
            job_log_max: m.get_one::<u64>("job-log-max").copied().unwrap_or(16 << 20),
            power: plinth_api::power::PowerConfig {
                limits: plinth_power::Limits {
                    timeout: secs("bmc-timeout", 20),
                    ipmitool: m.get_one::<std::path::PathBuf>("ipmitool").cloned().unwrap_or_else(|| "ipmitool".into()),
                },
                concurrency: m.get_one::<u32>("power-concurrency").copied().unwrap_or(16) as usize,
                poll: Some(secs("power-poll", 300)).filter(|d| !d.is_zero()),
                reboot_timeout: secs("reboot-timeout", 1200),
                reboot_cycles: m.get_one::<u32>("reboot-cycles").copied().unwrap_or(2),
                job_grace: secs("job-grace", 120),
                media: None,
            },
            join_limits: plinth_boot::generated::JoinLimits {
                outstanding: m.get_one::<u64>("discovery-tokens-max").copied().unwrap_or(1024) as usize,
                per_subnet: m.get_one::<u64>("discovery-tokens-per-subnet").copied().unwrap_or(256) as usize,
                per_address_per_minute: m.get_one::<u32>("discovery-tokens-per-address").copied().unwrap_or(10),
                ..Default::default()
            },
            boot_events_keep: Duration::from_secs(86_400 * m.get_one::<u64>("boot-events-days").copied().unwrap_or(30)),
            boot_events_max: m.get_one::<u64>("boot-events-max").copied().unwrap_or(1_000_000),
            boot_url: url_flag(m, "boot-url", "http")?,
            api_url: url_flag(m, "api-url", "https")?,
            log_format: m.get_one::<String>("log-format").cloned().unwrap_or_else(|| "text".into()),
        })
    }
}

/// Opens the store and makes it ready: first-start objects, the keyring
/// (re-sealing values under an older key), the built-in content pack, and
/// a report of what breaks the integrity rules.
async fn open_store(data_dir: &Path) -> Result<(Arc<dyn plinth_store::Store>, Arc<plinth_secrets::Keyring>)> {
    if !data_dir.exists() {
        // The data dir holds the store, keys and the initial password:
        // owner only, whatever the umask.
        plinth_secrets::ensure_dir(data_dir, 0o700)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    }
    let store = SqliteStore::open(&data_dir.join("plinth.db")).context("cannot open the store")?;
    let store: Arc<dyn plinth_store::Store> = Arc::new(store);
    plinth_api::bootstrap(store.as_ref(), data_dir, std::env::var("PLINTH_ADMIN_PASSWORD").ok())
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
    Ok((store, keyring))
}

/// The API's TLS: the site's certificate, or the local CA's (made on first
/// start, for every name and address machines may reach the API by). The
/// CA's PEM is returned too when it is the local one: agents are given it.
fn tls(config: &Config) -> Result<(Arc<plinth_api::TlsConfig>, String)> {
    let (cert, key, agent_ca) = match &config.tls {
        Some((c, k)) => (c.clone(), k.clone(), String::new()),
        None => {
            let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            names.extend(hostname());
            if config.api_addr.ip().is_unspecified() {
                // Listening everywhere: machines reach the API on any of
                // this host's addresses.
                for iface in if_addrs::get_if_addrs().unwrap_or_default() {
                    if !iface.is_loopback() {
                        names.push(iface.ip().to_string());
                    }
                }
            } else {
                names.push(config.api_addr.ip().to_string());
            }
            names.extend(config.tls_sans.iter().cloned());
            names.sort();
            names.dedup();
            let files = plinth_api::tls::ensure_local_ca(&config.data_dir, &names).context("cannot set up TLS")?;
            let ca = std::fs::read_to_string(&files.ca_cert).unwrap_or_default();
            (files.cert, files.key, ca)
        }
    };
    let tls = plinth_api::tls::server_config(&cert, &key).context("cannot load the TLS certificate")?;
    Ok((tls, agent_ca))
}

/// Runs the server until SIGTERM or SIGINT, or until a listener fails.
pub async fn run(config: Config) -> Result<()> {
    init_logging(&config.log_format);
    let (store, keyring) = open_store(&config.data_dir).await?;
    let (tls, agent_ca) = tls(&config)?;
    let listener = std::net::TcpListener::bind(config.api_addr)
        .with_context(|| format!("cannot listen on {} (--api-addr)", config.api_addr))?;
    let bound = listener.local_addr()?;
    let state = AppState {
        agent_ca: agent_ca.clone(),
        store,
        default_token_ttl: config.token_ttl,
        keyring: keyring.clone(),
        logins: Default::default(),
        machine_session_max: config.machine_session_max,
        metadata_token_ttl: config.metadata_token_ttl,
        progress: Default::default(),
        readiness: Default::default(),
        metrics: Default::default(),
        api_url: config.api_url.clone(),
        job_log_max: config.job_log_max,
        power: Arc::new(plinth_api::power::Power::new(plinth_api::power::PowerConfig {
            media: config.http_addr.map(|_| plinth_api::power::MediaConfig {
                file_root: config.file_root.clone(),
                boot_url: config.boot_url.clone(),
                credential_ttl: config.machine_token_ttl,
                xorriso: "xorriso".into(),
            }),
            ..config.power.clone()
        })),
    };
    tracing::info!(service = "api", url = %format!("https://{bound}"), "listening");

    if !config.file_root.exists() {
        // Served to anyone, written only by the owner, whatever the umask.
        plinth_secrets::ensure_dir(&config.file_root, 0o755)
            .with_context(|| format!("cannot create file root {}", config.file_root.display()))?;
    }
    let file_root = plinth_boot::files::FileRoot::new(&config.file_root)
        .with_context(|| format!("cannot use file root {}", config.file_root.display()))?;
    tracing::info!(path = %file_root.path().display(), "serving boot files from the file root");

    let boot_log = plinth_boot::events::BootLog::start(state.store.clone());
    let boot_files = plinth_boot::generated::BootFiles {
        api_port: bound.port(),
        api_url: config.api_url.clone(),
        boot_token_ttl: config.machine_token_ttl,
        ca_pem: agent_ca,
        join: config.join_limits,
    };
    let generated: Arc<dyn plinth_boot::generated::Generated> = Arc::new(plinth_boot::generated::RenderedFiles::new(
        state.store.clone(),
        file_root.clone(),
        boot_files,
        keyring,
    ));

    // One shutdown signal fans out to every task.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    // Every 10 minutes, until the server stops: unusable tokens (expired,
    // join tokens used up) are removed, and boot events past their
    // retention pruned.
    let (sweep_store, stop) = (state.store.clone(), stopped());
    let (keep, max) = (config.boot_events_keep, config.boot_events_max);
    tasks.spawn(async move {
        let sweep = async {
            let mut every = tokio::time::interval(Duration::from_secs(600));
            loop {
                every.tick().await;
                match plinth_api::sweep_tokens(sweep_store.as_ref()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(tokens = n, "removed expired and used-up tokens"),
                    Err(e) => tracing::warn!(error = %e, "cannot sweep tokens"),
                }
                let before = plinth_model::now() - chrono::Duration::from_std(keep).unwrap_or_default();
                match sweep_store.prune_boot_events(before, max).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(events = n, "pruned boot events past their retention"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune boot events"),
                }
            }
        };
        tokio::select! {
            _ = stop => Ok(()),
            () = sweep => Ok(()),
        }
    });

    let mut http_port = 8091;
    if let Some(addr) = config.http_addr {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                http_port = l.local_addr()?.port();
                let _ = state.power.http_port.set(http_port);
                state.readiness.set("http", true);
                tracing::info!(service = "http", url = %format!("http://{}", l.local_addr()?), "listening");
                if addr.ip().is_unspecified() {
                    tracing::warn!(%addr, "boot HTTP answers on every address of this host, not only the provisioning network's; pass --http-addr ADDRESS:PORT to narrow it");
                }
                let (root, gen_files, log, stop) = (file_root.clone(), generated.clone(), boot_log.clone(), stopped());
                let public = config.boot_url.clone();
                tasks.spawn(async move {
                    plinth_boot::http::serve(l, root, gen_files, log, public, stop)
                        .await
                        .context("boot HTTP server failed")
                });
            }
            Err(e) => {
                state.readiness.set("http", false);
                tracing::error!(%addr, error = %e, "cannot listen for boot HTTP (--http-addr); continuing without it")
            }
        }
    }
    if let Some(addr) = config.tftp_addr {
        match tokio::net::UdpSocket::bind(addr).await {
            Ok(s) => {
                state.readiness.set("tftp", true);
                tracing::info!(service = "tftp", url = %format!("tftp://{}", s.local_addr()?), "listening");
                if addr.ip().is_unspecified() {
                    tracing::warn!(%addr, "TFTP answers on every address of this host, not only the provisioning network's; pass --tftp-addr ADDRESS:69 to narrow it");
                }
                let (root, gen_files, log, stop) = (file_root.clone(), generated.clone(), boot_log.clone(), stopped());
                let tftp_config = plinth_boot::tftp::TftpConfig {
                    http_port,
                    http_url: config.boot_url.clone(),
                    max_transfers_per_client: config.tftp_per_client,
                    ..Default::default()
                };
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
                state.readiness.set("tftp", false);
                tracing::error!(%addr, error = %e, "cannot listen for TFTP{hint}; continuing without it");
            }
        }
    }
    let dhcp_stats = Arc::new(plinth_boot::dhcp::DhcpStats::default());
    match config.dhcp_port {
        None => tracing::info!("dhcp: disabled (--dhcp-port off)"),
        Some(server_port) => {
            let dhcp = plinth_boot::dhcp::DhcpConfig {
                server_port,
                http_port,
                http_url: config.boot_url.clone(),
                stats: dhcp_stats.clone(),
                ..Default::default()
            };
            let (store, log, stop) = (state.store.clone(), boot_log.clone(), stopped());
            tasks.spawn(async move {
                plinth_boot::dhcp::serve(store, dhcp, log, stop).await;
                Ok(())
            });
        }
    }
    // Power: BMCs polled, the workflow's power actions carried out, and
    // machines that do not come back from a reboot power-cycled.
    let (power_state, power_stop) = (state.clone(), stopped());
    tasks.spawn(async move {
        plinth_api::power::run(power_state, power_stop).await;
        Ok(())
    });
    if let Some(addr) = config.metrics_addr {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (--metrics-addr)"))?;
        tracing::info!(service = "metrics", url = %format!("http://{}/metrics", l.local_addr()?), "listening");
        let sources = Arc::new(crate::metrics::Sources {
            store: state.store.clone(),
            dhcp: dhcp_stats.clone(),
            boot: boot_log.stats().clone(),
            api: state.metrics.clone(),
            readiness: state.readiness.clone(),
        });
        let stop = stopped();
        tasks.spawn(async move { crate::metrics::serve(l, sources, stop).await.context("metrics listener failed") });
    }
    state.readiness.set("api", true);
    let api_stop = stopped();
    tasks.spawn(async move { plinth_api::serve(listener, tls, state, api_stop).await.context("API server failed") });
    tokio::select! {
        _ = shutdown_signal() => {}
        Some(r) = tasks.join_next() => {
            // A task ended on its own: that is a failure; stop the rest.
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

/// A URL flag (`--boot-url`, `--api-url`) with the scheme it must have.
fn url_flag(m: &ArgMatches, name: &str, scheme: &str) -> Result<Option<String>> {
    let Some(url) = m.get_one::<String>(name) else { return Ok(None) };
    let rest = url
        .strip_prefix(&format!("{scheme}://"))
        .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]/_".contains(&b)));
    match rest {
        Some(_) => Ok(Some(url.trim_end_matches('/').to_owned())),
        None => anyhow::bail!("--{name} must be a {scheme}:// URL such as {scheme}://10.0.0.1:8092, got `{url}`"),
    }
}

/// A listen address flag, where `off` disables the listener.
fn optional_addr(m: &ArgMatches, name: &str) -> Result<Option<SocketAddr>> {
    match m.get_one::<String>(name).map(String::as_str) {
        None | Some("off") | Some("") => Ok(None),
        Some(a) => a.parse().map(Some).with_context(|| format!("--{name} must be IP:PORT or `off`, got `{a}`")),
    }
}
