//! Files made per request instead of read from the file root.
//! [`RenderedFiles`] renders a known machine's bootenv files (the machine
//! found by MAC, from the path or the client's lease, or by the machine
//! token in `/t/<token>/…`); for a machine Plinth does not know it falls
//! back to the file root's `ipxe/<mac>.ipxe` or `ipxe/default.ipxe`
//! ([`IpxeScripts`]), then the `ipxe-default` and `grub-default` templates.
//! TFTP asks it for paths that are not plain files of the file root; boot
//! HTTP answers `/ipxe/<mac>`, `/machines/<mac>/<path>` and
//! `/t/<token>/<path>` with it.

use crate::files::FileRoot;
use async_trait::async_trait;
use plinth_model::MacAddr;
use std::net::Ipv4Addr;

/// What a client asked for.
#[derive(Debug, Clone)]
pub struct FileRequest<'a> {
    /// The requested path, relative (`ipxe/52-54-00-12-34-56`).
    pub path: &'a str,
    /// The client's address.
    pub client: Option<Ipv4Addr>,
    /// The client's MAC, when the request names it.
    pub mac: Option<MacAddr>,
    /// Base URL of the boot HTTP server as this client reaches it.
    pub http_base: Option<String>,
    /// Architecture the client says it runs (iPXE `${buildarch}`).
    pub arch: Option<plinth_model::Arch>,
    /// Firmware the client says it runs (iPXE `${platform}`).
    pub firmware: Option<plinth_model::Firmware>,
    /// A machine token in the path (`/t/<token>/...`): the file is for the
    /// token's machine, and the request is known to come from it.
    pub token: Option<&'a str>,
}

impl<'a> FileRequest<'a> {
    /// A request for `path` with nothing else known.
    pub fn new(path: &'a str) -> FileRequest<'a> {
        FileRequest { path, client: None, mac: None, http_base: None, arch: None, firmware: None, token: None }
    }
}

/// A source of generated files.
#[async_trait]
pub trait Generated: Send + Sync + 'static {
    /// The file's bytes, or `None` when this path is not one it makes.
    async fn lookup(&self, request: &FileRequest<'_>) -> Option<Vec<u8>>;
}

/// The file-root scripts for machines Plinth does not know: `ipxe/<mac>`
/// is the file root's `ipxe/<mac>.ipxe` (MAC as `52-54-00-12-34-56`), else
/// `ipxe/default.ipxe`.
pub struct IpxeScripts {
    root: FileRoot,
}

impl IpxeScripts {
    /// Serves scripts from `root`.
    pub fn new(root: FileRoot) -> IpxeScripts {
        IpxeScripts { root }
    }
}

/// Parses the MAC in `ipxe/<mac>` (colons or dashes, any case).
pub fn ipxe_path_mac(path: &str) -> Option<MacAddr> {
    let rest = path.trim_start_matches('/').strip_prefix("ipxe/")?;
    rest.replace('-', ":").parse().ok()
}

#[async_trait]
impl Generated for IpxeScripts {
    async fn lookup(&self, request: &FileRequest<'_>) -> Option<Vec<u8>> {
        let mac = request.mac.or_else(|| ipxe_path_mac(request.path))?;
        let specific = format!("ipxe/{}.ipxe", mac.to_string().replace(':', "-"));
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let path = root.resolve(specific.as_bytes()).or_else(|_| root.resolve(b"ipxe/default.ipxe")).ok()?;
            std::fs::read(path).ok()
        })
        .await
        .ok()
        .flatten()
    }
}

/// How the boot files Plinth renders reach back to it, and what the
/// credentials in them may be.
#[derive(Debug, Clone)]
pub struct BootFiles {
    /// The API's port, on the host the client reached the boot server on
    /// (unless `api_url` says otherwise).
    pub api_port: u16,
    /// The API's URL as machines reach it (`--api-url`), when configured.
    pub api_url: Option<String>,
    /// Lifetime of the boot credentials (`machine_token()`) boot files carry.
    pub boot_token_ttl: std::time::Duration,
    /// PEM of the CA agents are given; empty for none.
    pub ca_pem: String,
    /// The bounds on the join tokens unknown machines' scripts carry.
    pub join: JoinLimits,
}

/// Bounds on the join tokens minted for machines Plinth does not know, by
/// requests nobody authenticates: how long one lives, and how many may be
/// outstanding (in all, per subnet) or minted per client address a minute.
#[derive(Debug, Clone, Copy)]
pub struct JoinLimits {
    pub ttl: std::time::Duration,
    pub outstanding: usize,
    pub per_subnet: usize,
    pub per_address_per_minute: u32,
}

impl Default for JoinLimits {
    fn default() -> JoinLimits {
        JoinLimits {
            ttl: std::time::Duration::from_secs(600),
            outstanding: 1024,
            per_subnet: 256,
            per_address_per_minute: 10,
        }
    }
}

/// Join tokens minted and not yet expired, by subnet; minting per address.
#[derive(Default)]
struct JoinBudget {
    /// (expiry, subnet) of each outstanding token, oldest first.
    outstanding: std::collections::VecDeque<(std::time::Instant, String)>,
    /// Tokens minted per client address in the current minute.
    per_address: std::collections::HashMap<Ipv4Addr, (std::time::Instant, u32)>,
}

impl JoinBudget {
    /// Takes one join token's worth for a client of `subnet` at `address`,
    /// or says why not.
    fn take(&mut self, limits: &JoinLimits, subnet: &str, address: Option<Ipv4Addr>) -> Result<(), String> {
        let now = std::time::Instant::now();
        while self.outstanding.front().is_some_and(|(exp, _)| *exp <= now) {
            self.outstanding.pop_front();
        }
        if self.outstanding.len() >= limits.outstanding {
            return Err(format!("{} join tokens are outstanding, the most there may be", limits.outstanding));
        }
        if self.outstanding.iter().filter(|(_, s)| s == subnet).count() >= limits.per_subnet {
            return Err(format!(
                "{} join tokens are outstanding for {subnet}, the most there may be",
                limits.per_subnet
            ));
        }
        if let Some(ip) = address {
            if self.per_address.len() > 65_536 {
                self.per_address.retain(|_, (since, _)| since.elapsed() < std::time::Duration::from_secs(60));
            }
            let e = self.per_address.entry(ip).or_insert((now, 0));
            if e.0.elapsed() >= std::time::Duration::from_secs(60) {
                *e = (now, 0);
            }
            if e.1 >= limits.per_address_per_minute {
                return Err(format!("{ip} was given {} join tokens this minute", e.1));
            }
            e.1 += 1;
        }
        self.outstanding.push_back((now + limits.ttl, subnet.to_owned()));
        Ok(())
    }
}

pub use plinth_store::BOOT_TOKENS_KEPT;

/// Renders the files of each known machine's bootenv at their paths, found
/// by MAC (from the path or the client's lease). Unknown machines, and paths
/// the bootenv does not define, fall back to [`IpxeScripts`].
pub struct RenderedFiles {
    store: std::sync::Arc<dyn plinth_store::Store>,
    shared: plinth_render::SharedCache,
    fallback: IpxeScripts,
    config: BootFiles,
    keyring: std::sync::Arc<plinth_secrets::Keyring>,
    joins: std::sync::Arc<std::sync::Mutex<JoinBudget>>,
    agent_sums: std::sync::Arc<std::sync::Mutex<AgentSums>>,
    metadata_events: std::sync::Arc<std::sync::Mutex<EventBudget>>,
}

/// Metadata reads recorded on a machine's timeline: at most
/// [`EventBudget::PER_MINUTE`] a machine a minute, so a token's holder
/// cannot flood the boot event log (which is pruned oldest first).
#[derive(Default)]
struct EventBudget {
    by_machine: std::collections::HashMap<plinth_model::MachineId, (std::time::Instant, u32)>,
}

impl EventBudget {
    const PER_MINUTE: u32 = 20;

    /// Whether one more event for `machine` fits this minute.
    fn take(&mut self, machine: plinth_model::MachineId) -> bool {
        let now = std::time::Instant::now();
        if self.by_machine.len() > 4096 {
            self.by_machine.retain(|_, (at, _)| now.duration_since(*at).as_secs() < 60);
        }
        let e = self.by_machine.entry(machine).or_insert((now, 0));
        if now.duration_since(e.0).as_secs() >= 60 {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= Self::PER_MINUTE
    }
}

/// SHA-256 of the agent binaries in the file root, by architecture,
/// recomputed when a file's size or time changes.
#[derive(Default)]
struct AgentSums {
    by_arch: std::collections::BTreeMap<String, (u64, std::time::SystemTime, String)>,
}

impl AgentSums {
    /// The sums of the agents `root` holds now (`agent/plinth-agent-<arch>`).
    fn current(&mut self, root: &FileRoot) -> std::collections::BTreeMap<String, String> {
        use sha2::Digest;
        let mut out = std::collections::BTreeMap::new();
        for arch in [plinth_model::Arch::Amd64, plinth_model::Arch::Arm64] {
            let arch = arch.as_str();
            let Ok(path) = root.resolve(format!("agent/plinth-agent-{arch}").as_bytes()) else {
                self.by_arch.remove(arch);
                continue;
            };
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let stamp = (meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH));
            match self.by_arch.get(arch) {
                Some((len, at, sum)) if (*len, *at) == stamp => {
                    out.insert(arch.to_owned(), sum.clone());
                }
                _ => {
                    let Ok(mut file) = std::fs::File::open(&path) else { continue };
                    let mut hasher = sha2::Sha256::new();
                    if std::io::copy(&mut file, &mut hasher).is_err() {
                        continue;
                    }
                    let sum: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
                    self.by_arch.insert(arch.to_owned(), (stamp.0, stamp.1, sum.clone()));
                    out.insert(arch.to_owned(), sum);
                }
            }
        }
        out
    }
}

/// Stores a freshly minted token from a blocking render.
fn store_token(
    handle: &tokio::runtime::Handle,
    store: &dyn plinth_store::Store,
    token: &plinth_model::Token,
) -> Result<(), String> {
    let body = serde_json::to_value(token).map_err(|e| e.to_string())?;
    handle
        .block_on(plinth_store::StoreExt::create(store, plinth_model::Kind::Token, &token.id.to_string(), body))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Why a metadata token could not hand out a boot credential.
enum Taken {
    Store(plinth_store::StoreError),
    NoneLeft,
}

impl From<plinth_store::StoreError> for Taken {
    fn from(e: plinth_store::StoreError) -> Taken {
        Taken::Store(e)
    }
}

/// Takes metadata token `id`'s one boot credential (its `uses_left`),
/// atomically: a second render of the vendor-data that carries one fails.
async fn take_credential(store: &dyn plinth_store::Store, id: plinth_model::TokenId) -> Result<(), String> {
    let taken = plinth_store::StoreExt::update_as::<plinth_model::Token, Taken, _>(store, &id.to_string(), |t| match t
        .uses_left
    {
        Some(0) => Err(Taken::NoneLeft),
        _ => {
            t.uses_left = Some(0);
            Ok(())
        }
    })
    .await;
    match taken {
        Ok(_) => Ok(()),
        Err(Taken::NoneLeft) => Err("this metadata token already handed out its boot credential; \
            `plinth machines metadata-token` mints a new one"
            .into()),
        Err(Taken::Store(e)) => Err(e.to_string()),
    }
}

/// The stored template that answers `ipxe/<mac>` for machines Plinth does
/// not know (after the file root's `ipxe/default.ipxe`).
pub const DEFAULT_IPXE_TEMPLATE: &str = "ipxe-default";

/// The stored template that answers `grub/grub.cfg` for machines Plinth
/// does not know.
pub const DEFAULT_GRUB_TEMPLATE: &str = "grub-default";

/// Whether `path` is GRUB's own config file, `grub/grub.cfg`, which GRUB
/// loaded over the network asks for (after `grub.cfg-01-<mac>` and the
/// address-named ones, where its version searches those).
pub fn is_grub_config(path: &str) -> bool {
    path.trim_start_matches('/') == "grub/grub.cfg"
}

impl RenderedFiles {
    /// Renders from `store`, falling back to scripts in `root`.
    pub fn new(
        store: std::sync::Arc<dyn plinth_store::Store>,
        root: FileRoot,
        config: BootFiles,
        keyring: std::sync::Arc<plinth_secrets::Keyring>,
    ) -> RenderedFiles {
        let shared = plinth_render::SharedCache::new(store.clone());
        RenderedFiles {
            store,
            shared,
            fallback: IpxeScripts::new(root),
            config,
            keyring,
            joins: Default::default(),
            agent_sums: Default::default(),
            metadata_events: Default::default(),
        }
    }

    /// Records secure values rendered into a boot file in the audit log;
    /// `None` (the file is not served) when that cannot be recorded.
    async fn audit_secure_read(
        &self,
        machine: plinth_model::MachineId,
        request: &FileRequest<'_>,
        read: &std::sync::Mutex<std::collections::BTreeSet<String>>,
    ) -> Option<()> {
        let names: Vec<String> = read.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        if names.is_empty() {
            return Some(());
        }
        let client = request.client.map(|c| c.to_string()).unwrap_or_default();
        let (actor, how) = match request.token {
            Some(_) => (format!("machine:{machine}"), format!("with its token, from {client}")),
            None => (format!("address:{client}"), "from its leased address".to_owned()),
        };
        let detail = format!(
            "secure params {} rendered into boot file `{}` {how}",
            names.join(", "),
            request.path.escape_debug()
        );
        let entry = plinth_model::AuditEntry::secure_read(actor, machine, detail);
        match self.store.append_audit(vec![entry]).await {
            Ok(()) => Some(()),
            Err(e) => {
                tracing::error!(error = %e, "cannot record a secure read in the audit log; not serving the file");
                None
            }
        }
    }

    /// `secure_param()` for a file `view`'s machine asked for: the values
    /// when the request comes from the address the machine holds a live
    /// lease on (or with its token), and the site trusts the machine; else
    /// an error naming why (the file is then not served).
    fn secure_params(
        &self,
        view: &plinth_render::MachineView,
        request: &FileRequest<'_>,
        read: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    ) -> plinth_render::SecureParams {
        if !view.machine.trusted {
            return view.secure_withheld();
        }
        let leased = view.lease.as_ref().map(|l| l.address);
        // `lookup` only renders for the token's own machine.
        if request.token.is_some() || (leased.is_some() && request.client == leased) {
            return view.secure_params(self.keyring.clone(), read);
        }
        let machine = view.machine.name.to_string();
        std::sync::Arc::new(move |_: &str| {
            Err(format!(
                "the file holds a secure value; it is served only to machine `{machine}`, from the address it leased or with its token in the path (/t/<token>/...)"
            ))
        })
    }

    /// What a known machine's render gets: where it reaches Plinth, its
    /// boot credential minter and its secure values (the names read are
    /// collected for the audit log).
    async fn machine_provisioner(
        &self,
        view: &plinth_render::MachineView,
        request: &FileRequest<'_>,
        metadata_token: Option<plinth_model::TokenId>,
    ) -> (plinth_render::Provisioner, std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>) {
        let mut provisioner = self.provisioner(request).await;
        provisioner.hooks.machine_token = Some(self.minter_with(view, request, metadata_token));
        let read = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        provisioner.hooks.secure_param = Some(self.secure_params(view, request, read.clone()));
        (provisioner, read)
    }

    /// Where a file rendered for `request` reaches Plinth: the boot server
    /// as the client reached it (or as configured), the API as configured
    /// or on that host.
    async fn provisioner(&self, request: &FileRequest<'_>) -> plinth_render::Provisioner {
        let (sums, root) = (self.agent_sums.clone(), self.fallback.root.clone());
        let agent_sha256 =
            tokio::task::spawn_blocking(move || sums.lock().unwrap_or_else(|p| p.into_inner()).current(&root))
                .await
                .unwrap_or_default();
        let http = request.http_base.clone().unwrap_or_default();
        let host = http.split_once("://").map_or(http.as_str(), |(_, h)| h);
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let api = match &self.config.api_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if host.is_empty() => String::new(),
            None => format!("https://{host}:{}", self.config.api_port),
        };
        plinth_render::Provisioner {
            api,
            http,
            arch: request.arch,
            firmware: request.firmware,
            ca_pem: self.config.ca_pem.clone(),
            agent_sha256,
            hooks: Default::default(),
        }
    }

    /// Issues a boot credential for `view`'s machine from a blocking render:
    /// short-lived, traded once for a session, and, where Plinth leased the
    /// machine its address, handed only to that address (or the machine's
    /// own `address`) or to a request that carries the machine's token.
    /// For a render of the metadata service with metadata token `metadata`
    /// (its id), the leased-address rule holds whatever the token, and the
    /// token hands out one boot credential in all.
    fn minter_with(
        &self,
        view: &plinth_render::MachineView,
        request: &FileRequest<'_>,
        metadata: Option<plinth_model::TokenId>,
    ) -> plinth_render::TokenMinter {
        let store = self.store.clone();
        let ttl = self.config.boot_token_ttl;
        let handle = tokio::runtime::Handle::current();
        let machine = view.machine.id;
        let leased = view.lease.as_ref().map(|l| l.address);
        let refused = match (leased, request.client) {
            _ if request.token.is_some() && metadata.is_none() => None,
            (Some(lease), Some(client)) if client == lease || view.machine.address == Some(client) => None,
            (Some(lease), client) => Some(format!(
                "machine `{}` leased {lease}; its boot credential is handed only to that address, not to {}",
                view.machine.name,
                client.map(|c| c.to_string()).unwrap_or_else(|| "an unknown address".into())
            )),
            (None, _) => None,
        };
        let address = request.client;
        std::sync::Arc::new(move || {
            if let Some(why) = &refused {
                return Err(why.clone());
            }
            if let Some(id) = metadata {
                handle.block_on(take_credential(store.as_ref(), id))?;
            }
            let now = plinth_model::now();
            let expires = now + chrono::Duration::from_std(ttl).map_err(|e| e.to_string())?;
            let (mut token, bearer) = plinth_model::Token::mint(
                plinth_model::Name::known("machine"),
                format!("boot credential for {machine}, in a boot file"),
                expires,
                Some(machine),
            );
            token.boot = true;
            token.uses_left = Some(1);
            token.address = address;
            handle
                .block_on(plinth_store::StoreExt::put_boot_token(store.as_ref(), &token, now))
                .map_err(|e| e.to_string())?;
            Ok(bearer)
        })
    }

    /// Issues a single-use join token from a blocking render: what an
    /// unknown machine's discovery agent registers with. It registers new
    /// machines only (see `Token::discovery`), lives minutes, and is
    /// minted only within the [`JoinLimits`].
    fn join_minter(
        &self,
        workflow: Option<String>,
        request: &FileRequest<'_>,
        subnet: String,
    ) -> plinth_render::TokenMinter {
        let store = self.store.clone();
        let handle = tokio::runtime::Handle::current();
        let (limits, joins, address) = (self.config.join, self.joins.clone(), request.client);
        std::sync::Arc::new(move || {
            joins.lock().unwrap_or_else(|p| p.into_inner()).take(&limits, &subnet, address)?;
            let expires = plinth_model::now() + chrono::Duration::from_std(limits.ttl).map_err(|e| e.to_string())?;
            let (mut token, bearer) = plinth_model::Token::mint(
                plinth_model::Name::known("admin"),
                "discovery: single-use join token from the unknown-machine boot script".into(),
                expires,
                None,
            );
            token.join = true;
            token.discovery = true;
            token.uses_left = Some(1);
            token.join_workflow = workflow.as_deref().and_then(|w| w.parse().ok());
            store_token(&handle, store.as_ref(), &token)?;
            Ok(bearer)
        })
    }

    /// `ipxe-default` or `grub-default` (`name`) rendered for a machine
    /// Plinth does not know yet.
    async fn unknown_machine_script(
        &self,
        request: &FileRequest<'_>,
        target: &Target,
        name: &'static str,
    ) -> Option<Vec<u8>> {
        let stored = self.store.get(plinth_model::Kind::Template, name).await.ok()??;
        let template: plinth_model::Template = plinth_model::decode(stored.body).ok()?;
        let provisioner = self.provisioner(request).await;
        let mac = request.mac.or(target.mac()).map(|m| m.to_string());
        let ctx = serde_json::json!({"mac": mac, "provisioner": {"http": provisioner.http, "api": provisioner.api},
            "boot": {"arch": provisioner.arch, "firmware": provisioner.firmware}});
        let templates = std::sync::Arc::new(std::collections::HashMap::from([(name.to_owned(), template.contents)]));
        // The `global` profile's values, for param() in this script.
        let global: std::collections::BTreeMap<String, serde_json::Value> =
            match self.store.get(plinth_model::Kind::Profile, "global").await.ok().flatten() {
                Some(r) => plinth_model::decode::<plinth_model::Profile>(r.body)
                    .map(|p| p.params.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                    .unwrap_or_default(),
                None => Default::default(),
            };
        let workflow =
            global.get("discovery-workflow").and_then(|v| v.as_str()).filter(|w| !w.is_empty()).map(str::to_owned);
        let subnet = self.subnet_of(request.client).await;
        let hooks = plinth_render::Hooks {
            join_token: Some(self.join_minter(workflow, request, subnet)),
            ..Default::default()
        };
        let params = std::sync::Arc::new(global);
        let out = tokio::task::spawn_blocking(move || {
            plinth_render::render(templates, plinth_render::Source::Named(name), &ctx, params, &hooks)
        })
        .await
        .ok()?;
        match out {
            Ok(text) => Some(text.into_bytes()),
            Err(e) => {
                tracing::warn!(template = name, error = %e, "cannot render the boot script for unknown machines");
                None
            }
        }
    }

    /// What a client's join tokens are counted against: the subnet of the
    /// lease Plinth gave its address, else the /24 its address is in.
    async fn subnet_of(&self, client: Option<Ipv4Addr>) -> String {
        let Some(ip) = client else { return "clients with no address".into() };
        let lease = self.store.get(plinth_model::Kind::Lease, &ip.to_string()).await.ok().flatten();
        if let Some(l) = lease.and_then(|r| plinth_model::decode::<plinth_model::Lease>(r.body).ok())
            && l.is_live(plinth_model::now())
        {
            return format!("subnet `{}`", l.subnet);
        }
        let o = ip.octets();
        format!("{}.{}.{}.0/24", o[0], o[1], o[2])
    }

    /// The machine a valid, unexpired machine token belongs to, and, for a
    /// metadata token (it reads the metadata service only), its id.
    async fn token_machine(&self, bearer: &str) -> Option<(plinth_model::Machine, Option<plinth_model::TokenId>)> {
        use plinth_model::Kind;
        let (id, secret) = plinth_model::Token::parse_bearer(bearer)?;
        let record = self.store.get(Kind::Token, &id.to_string()).await.ok()??;
        let token: plinth_model::Token = plinth_model::decode(record.body).ok()?;
        // A boot credential already traded for a session is good for nothing.
        let traded = token.boot && token.uses_left == Some(0);
        if !token.secret_matches(secret) || token.expires_at <= plinth_model::now() || traded {
            return None;
        }
        let machine = self.store.get(Kind::Machine, &token.machine?.to_string()).await.ok()??;
        Some((plinth_model::decode(machine.body).ok()?, token.metadata.then_some(token.id)))
    }

    /// The machine a request is for: the token's, or the one holding the
    /// MAC the path names (or, failing that, the MAC of the client's lease).
    async fn machine_of(&self, request: &FileRequest<'_>, target: &Target) -> Found {
        use plinth_model::Kind;
        use plinth_store::StoreExt;
        if let Some(bearer) = request.token {
            return self.token_machine(bearer).await.map_or(Found::Unknown, |(m, _)| Found::One(Box::new(m)));
        }
        let mac = match request.mac.or(target.mac()) {
            Some(m) => m,
            None => {
                // By the client's lease: a live one only; an ended lease
                // names nobody.
                let Some(ip) = request.client else { return Found::Unknown };
                let lease = self.store.get(Kind::Lease, &ip.to_string()).await.ok().flatten();
                match lease.and_then(|l| plinth_model::decode::<plinth_model::Lease>(l.body).ok()) {
                    Some(l) if l.is_live(plinth_model::now()) => l.mac,
                    _ => return Found::Unknown,
                }
            }
        };
        let filter =
            plinth_store::Filter { path: vec!["macs".into()], value: serde_json::Value::String(mac.to_string()) };
        let found = self.store.list_all(Kind::Machine, vec![filter]).await.unwrap_or_default();
        let mut machines: Vec<plinth_model::Machine> =
            found.into_iter().filter_map(|r| plinth_model::decode(r.body).ok()).collect();
        match machines.len() {
            0 => Found::Unknown,
            1 => Found::One(Box::new(machines.remove(0))),
            _ => Found::Ambiguous(mac, machines),
        }
    }

    /// A MAC several machines claim (a store from before MACs were unique):
    /// the boot is refused with a boot event saying so, never guessed.
    async fn refuse_ambiguous(
        &self,
        request: &FileRequest<'_>,
        target: &Target,
        mac: plinth_model::MacAddr,
        machines: &[plinth_model::Machine],
    ) -> Option<Vec<u8>> {
        let names: Vec<String> = machines.iter().map(|m| format!("`{}` ({})", m.name, m.id)).collect();
        let why = format!(
            "MAC {mac} belongs to machines {}; not booting any of them: remove the MAC from all but one",
            names.join(" and ")
        );
        tracing::warn!(%mac, path = %request.path.escape_debug(), "{why}");
        let event = plinth_model::BootEvent {
            id: 0,
            at: plinth_model::now(),
            mac: Some(mac),
            address: request.client,
            machine: None,
            service: "http".into(),
            detail: format!("refused {}: {why}", request.path.escape_debug()),
        };
        let _ = self.store.append_boot_events(vec![event]).await;
        match target {
            Target::Ipxe(_) => Some(format!("#!ipxe\necho Plinth: {why}\nsleep 60\nexit 1\n").into_bytes()),
            Target::GrubConfig => Some(format!("echo \"Plinth: {why}\"\nsleep 60\nexit\n").into_bytes()),
            Target::Path(_) => None,
        }
    }

    /// The file `target` names rendered for a known machine: `Ok(None)`
    /// when its bootenv has no such file, `Err(())` when it cannot be
    /// served (the render failed, or a secure read could not be audited).
    async fn render_for(
        &self,
        machine: plinth_model::Machine,
        request: &FileRequest<'_>,
        target: &Target,
    ) -> Result<Option<Vec<u8>>, ()> {
        let name = machine.name.to_string();
        let loaded = match self.shared.get().await {
            Ok(shared) => plinth_render::load_with(self.store.as_ref(), &shared, machine).await,
            Err(e) => Err(e),
        };
        let view = match loaded {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!(machine = %name, error = %e, "cannot load what the machine's boot files need");
                return Ok(None);
            }
        };
        let (provisioner, read) = self.machine_provisioner(&view, request, None).await;
        let id = view.machine.id;
        let target = target.clone();
        let rendered = tokio::task::spawn_blocking(move || match &target {
            // The iPXE entry script is the bootenv file named `ipxe`; GRUB's
            // own `grub/grub.cfg`, the one named `grub`.
            Target::Ipxe(_) => view.render_path("ipxe", &provisioner),
            Target::GrubConfig => view.render_named("grub", &provisioner),
            Target::Path(path) => view.render_path(path, &provisioner),
        })
        .await
        .ok()
        .flatten();
        match rendered {
            Some(Ok(text)) => {
                self.audit_secure_read(id, request, &read).await.ok_or(())?;
                Ok(Some(text.into_bytes()))
            }
            Some(Err(e)) => {
                tracing::warn!(machine = %name, path = %request.path.escape_debug(), error = %e, "cannot render boot file");
                Err(())
            }
            None => Ok(None),
        }
    }
}

impl RenderedFiles {
    /// The metadata service's answer for `machine` (the token's): a NoCloud
    /// file rendered from its template, or a key of EC2's tree. Secure
    /// values are rendered as in boot files, and recorded; the read is on
    /// the machine's timeline.
    async fn metadata_for(
        &self,
        machine: plinth_model::Machine,
        request: &FileRequest<'_>,
        what: crate::metadata::MetadataPath,
        metadata_token: Option<plinth_model::TokenId>,
    ) -> Option<Vec<u8>> {
        use crate::metadata::{MetadataPath, NOCLOUD};
        let name = machine.name.to_string();
        let shared = self.shared.get().await.ok()?;
        let view = match plinth_render::load_with(self.store.as_ref(), &shared, machine).await {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!(machine = %name, error = %e, "cannot load what the machine's metadata needs");
                return None;
            }
        };
        let (provisioner, read) = self.machine_provisioner(&view, request, metadata_token).await;
        let id = view.machine.id;
        let path = request.path.trim_start_matches('/').to_owned();
        let rendered = tokio::task::spawn_blocking(move || -> Option<Result<String, plinth_render::RenderError>> {
            match what {
                MetadataPath::NoCloud(file) => {
                    let (_, default, param) = NOCLOUD.iter().find(|(f, _, _)| *f == file)?;
                    let params = view.plain_params();
                    let template = param
                        .and_then(|p| params.get(p))
                        .and_then(serde_json::Value::as_str)
                        .filter(|t| !t.is_empty())
                        .unwrap_or(default)
                        .to_owned();
                    Some(view.render(plinth_render::Source::Named(&template), &provisioner))
                }
                MetadataPath::Ec2(key) => {
                    let network = match view.context(&provisioner) {
                        Ok(ctx) => ctx["network"].clone(),
                        Err(e) => return Some(Err(e)),
                    };
                    let keys: Vec<String> = view
                        .plain_params()
                        .get("ssh-authorized-keys")
                        .and_then(serde_json::Value::as_array)
                        .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
                        .unwrap_or_default();
                    let tree = crate::metadata::ec2_tree(&view.machine, &network, &keys);
                    crate::metadata::ec2_answer(&tree, &key).map(Ok)
                }
            }
        })
        .await
        .ok()
        .flatten();
        let text = match rendered? {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(machine = %name, path = %path.escape_debug(), error = %e, "cannot render metadata");
                return None;
            }
        };
        self.audit_secure_read(id, request, &read).await?;
        let client = request.client.map(|c| c.to_string()).unwrap_or_else(|| "an unknown address".into());
        let event = plinth_model::BootEvent {
            id: 0,
            at: plinth_model::now(),
            mac: None,
            address: request.client,
            machine: Some(id),
            service: "metadata".into(),
            detail: format!("served {} to {client}, with the machine's token", path.escape_debug()),
        };
        if self.metadata_events.lock().unwrap_or_else(|p| p.into_inner()).take(id) {
            let _ = self.store.append_boot_events(vec![event]).await;
        }
        Some(text.into_bytes())
    }
}

/// What a generated-file request is for, decided once from its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `ipxe/<mac>`: the iPXE script of the machine with that MAC.
    Ipxe(plinth_model::MacAddr),
    /// `grub/grub.cfg`: GRUB's own configuration file.
    GrubConfig,
    /// Any other path: a file of the machine's bootenv at that path.
    Path(String),
}

impl Target {
    /// The target `path` (relative, cleaned) names.
    pub fn of(path: &str) -> Target {
        if let Some(mac) = ipxe_path_mac(path) {
            Target::Ipxe(mac)
        } else if is_grub_config(path) {
            Target::GrubConfig
        } else {
            Target::Path(path.trim_start_matches('/').to_owned())
        }
    }

    /// The MAC the path names.
    pub fn mac(&self) -> Option<plinth_model::MacAddr> {
        match self {
            Target::Ipxe(mac) => Some(*mac),
            _ => None,
        }
    }

    /// Whether a regular file at this path in the file root is served as
    /// it is, before any rendering (loaders, kernels, images): everything
    /// but the iPXE scripts and GRUB's configuration, which are per machine.
    pub fn file_root_first(&self) -> bool {
        matches!(self, Target::Path(_))
    }
}

/// Which machine a request is for.
enum Found {
    One(Box<plinth_model::Machine>),
    /// Several machines claim the MAC.
    Ambiguous(plinth_model::MacAddr, Vec<plinth_model::Machine>),
    Unknown,
}

#[async_trait]
impl Generated for RenderedFiles {
    async fn lookup(&self, request: &FileRequest<'_>) -> Option<Vec<u8>> {
        let target = Target::of(request.path);
        if let Some(bearer) = request.token {
            // A bad token gets nothing, not another machine's or the default
            // file. A metadata token reads the metadata service only; another
            // machine token reads its bootenv's files, then the metadata.
            let (machine, metadata_token) = self.token_machine(bearer).await?;
            let metadata = crate::metadata::MetadataPath::of(request.path);
            if metadata_token.is_none() {
                match self.render_for(machine.clone(), request, &target).await {
                    Ok(Some(bytes)) => return Some(bytes),
                    Err(()) => return None,
                    Ok(None) => {}
                }
            }
            return self.metadata_for(machine, request, metadata?, metadata_token).await;
        }
        let known = match self.machine_of(request, &target).await {
            Found::One(machine) => match self.render_for(*machine, request, &target).await {
                Ok(Some(bytes)) => return Some(bytes),
                Err(()) => return None,
                Ok(None) => true,
            },
            Found::Ambiguous(mac, machines) => return self.refuse_ambiguous(request, &target, mac, &machines).await,
            Found::Unknown => false,
        };
        match self.fallback.lookup(request).await {
            Some(found) => Some(found),
            // Only a machine Plinth does not know is sent to discovery.
            None if known => None,
            None => match target {
                Target::Ipxe(_) => self.unknown_machine_script(request, &target, DEFAULT_IPXE_TEMPLATE).await,
                Target::GrubConfig => self.unknown_machine_script(request, &target, DEFAULT_GRUB_TEMPLATE).await,
                Target::Path(_) => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn per_mac_script_then_default_then_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = FileRoot::new(dir.path()).unwrap();
        let p = IpxeScripts::new(root.clone());
        let req = FileRequest::new;
        assert_eq!(p.lookup(&req("ipxe/52-54-00-12-34-56")).await, None, "no scripts at all");
        std::fs::create_dir(root.path().join("ipxe")).unwrap();
        std::fs::write(root.path().join("ipxe/default.ipxe"), "#!ipxe\necho default\n").unwrap();
        std::fs::write(root.path().join("ipxe/52-54-00-12-34-56.ipxe"), "#!ipxe\necho mine\n").unwrap();
        assert_eq!(p.lookup(&req("ipxe/52:54:00:12:34:56")).await.unwrap(), b"#!ipxe\necho mine\n");
        assert_eq!(p.lookup(&req("/ipxe/52-54-00-AA-BB-CC")).await.unwrap(), b"#!ipxe\necho default\n");
        assert_eq!(p.lookup(&req("undionly.kpxe")).await, None, "not a generated path");
        assert_eq!(p.lookup(&req("ipxe/../../etc")).await, None);
    }
}
