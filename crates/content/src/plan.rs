//! Installing, upgrading, removing and rolling back content packs, each as
//! one transaction, after a plan that says exactly what changes: objects,
//! site overrides kept, param values the new schemas refuse, params the
//! new content requires and a machine lacks, and for every machine the
//! unified diff of each rendered file and task script.
//!
//! Layering: an object a pack installed carries `meta.pack` (and
//! `meta.pack_version`); the API refuses to change it unless the site
//! overrides it explicitly, which replaces `meta.pack` with
//! `meta.override`. An upgrade never writes over an override (the plan
//! reports it); two packs cannot hold one object unless the newer declares
//! `overrides: [other]`.

use crate::pack::{PACK_KINDS, Pack, Problems, strip_server_fields};
use plinth_model::{Kind, Machine, meta};
use plinth_store::{Expect, Store, StoreError, WriteOp};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// What happens to one object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectChange {
    pub kind: String,
    pub key: String,
    /// `added`, `changed`, `removed`, `override-kept` (the pack changed an
    /// object the site overrides; the site's stays), `taken-over` (from a
    /// pack this one overrides), `adopted` (a site object, with force).
    pub change: String,
}

/// A stored param value the new content's schema refuses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    pub param: String,
    /// Where the value is set: `machine web-1`, `profile rack-a`, ...
    pub location: String,
    pub why: String,
}

/// One changed file or task script of a machine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileDiff {
    /// `bootenv <name>: <file>` or `task <name>: <file>`.
    pub file: String,
    pub diff: String,
}

/// What changes for one machine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachinePlan {
    pub id: String,
    pub name: String,
    pub files: Vec<FileDiff>,
    /// Problems rendering with the new content (missing params, values
    /// that no longer fit): the upgrade would break this machine.
    pub errors: Vec<String>,
    /// The machine runs a workflow whose stages or tasks change.
    pub workflow_affected: bool,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Plan {
    pub pack: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub objects: Vec<ObjectChange>,
    /// What makes the change unsafe; `apply` refuses unless forced.
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub schema_violations: Vec<Violation>,
    /// Only machines with changes or errors.
    pub machines: Vec<MachinePlan>,
    pub machines_checked: usize,
    /// Machines kept on another version of the pack (canary upgrades).
    pub pinned: usize,
    #[serde(skip)]
    ops: Vec<WriteOp>,
}

/// Why a content operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    #[error(transparent)]
    Invalid(#[from] Problems),
    #[error("the plan has {} error{}; fix them or force:\n- {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("\n- "))]
    Refused(Vec<String>),
    #[error("no pack `{0}` is installed")]
    NotInstalled(String),
    #[error("pack `{0}` has no previous version to roll back to")]
    NoPrevious(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored content is invalid: {0}")]
    Corrupt(String),
}

/// `body` as the pack installs it: marked as the pack's.
fn owned(body: &Value, pack: &str, version: &str) -> Value {
    let mut b = strip_server_fields(body);
    if let Value::Object(m) = &mut b {
        let meta = m.entry("meta").or_insert_with(|| json!({}));
        if let Value::Object(meta) = meta {
            meta.insert(meta::PACK.into(), json!(pack));
            meta.insert(meta::PACK_VERSION.into(), json!(version));
        }
    }
    b
}

/// Whether two objects say the same, labels aside.
fn same_definition(a: &Value, b: &Value) -> bool {
    let bare = |v: &Value| {
        let mut v = strip_server_fields(v);
        if let Value::Object(m) = &mut v {
            m.remove("meta");
        }
        v
    };
    bare(a) == bare(b)
}

/// The installed pack `name`, with its stored record's revision.
/// An installed pack: its objects, its record and the record's revision.
type Installed = (Pack, plinth_model::Content, u64);

async fn installed(store: &dyn Store, name: &str) -> Result<Option<Installed>, PackError> {
    let Some(r) = store.get(Kind::Content, name).await? else { return Ok(None) };
    let c: plinth_model::Content = plinth_model::decode(r.body).map_err(|e| PackError::Corrupt(e.to_string()))?;
    let pack = Pack::from_stored(&c.bundle).map_err(|e| PackError::Corrupt(e.to_string()))?;
    Ok(Some((pack, c, r.revision)))
}

/// The placeholders a plan renders with: no token is minted, no secret opened.
fn plan_provisioner(view: &plinth_render::MachineView) -> plinth_render::Provisioner {
    plinth_render::Provisioner {
        http: "http://PROVISIONER:8091".into(),
        api: "https://PROVISIONER:8092".into(),
        hooks: plinth_render::Hooks {
            machine_token: Some(Arc::new(|| Ok("<machine-token>".to_owned()))),
            join_token: Some(Arc::new(|| Ok("<join-token>".to_owned()))),
            secure_param: Some(view.secure_placeholders()),
            metadata_token: Some(Arc::new(|| Ok("<metadata-token>".to_owned()))),
        },
        ..Default::default()
    }
}

/// Every file and task script rendered for a machine: name → output.
fn rendered(
    view: &plinth_render::MachineView,
    shared: &plinth_render::Shared,
    tasks: &HashMap<String, plinth_model::Task>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let provisioner = plan_provisioner(view);
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    let bootenv = view.machine.bootenv.to_string();
    for (name, path, r) in view.render_all(&provisioner) {
        let label = format!("bootenv {bootenv}: {}", path.unwrap_or(name));
        match r {
            Ok(text) => {
                out.insert(label, text);
            }
            Err(e) => errors.push(format!("{label}: {e}")),
        }
    }
    // The task scripts of the machine's workflow, every stage.
    if let Some(w) = view.machine.workflow.as_ref().and_then(|w| shared.workflows.get(w)) {
        for stage in w.stages.iter().filter_map(|s| shared.stages.get(s)) {
            for task in stage.tasks.iter().filter_map(|t| tasks.get(t.as_str())) {
                match view.render_task(task, &provisioner) {
                    Ok(files) => {
                        for (name, path, text) in files {
                            out.insert(format!("task {}: {}", task.name, path.unwrap_or(name)), text);
                        }
                    }
                    Err(e) => errors.push(format!("task {}: {e}", task.name)),
                }
            }
        }
    }
    (out, errors)
}

/// Stored objects a plan reads before anything changes.
struct World {
    shared_old: plinth_render::Shared,
    tasks_old: HashMap<String, plinth_model::Task>,
    machines: Vec<Machine>,
    /// Each machine's stored revision and body, by id.
    revisions: HashMap<String, (u64, Value)>,
}

impl World {
    async fn load(store: &dyn Store) -> Result<World, PackError> {
        let shared_old = plinth_render::load_shared(store).await.map_err(|e| PackError::Corrupt(e.to_string()))?;
        let mut tasks_old: HashMap<String, plinth_model::Task> = HashMap::new();
        for r in plinth_store::StoreExt::list_all(store, Kind::Task, vec![]).await? {
            let t: plinth_model::Task = plinth_model::decode(r.body).map_err(|e| PackError::Corrupt(e.to_string()))?;
            tasks_old.insert(t.name.to_string(), t);
        }
        let mut revisions: HashMap<String, (u64, Value)> = HashMap::new();
        let mut machines: Vec<Machine> = Vec::new();
        for r in plinth_store::StoreExt::list_all(store, Kind::Machine, vec![]).await? {
            machines.push(plinth_model::decode(r.body.clone()).map_err(|e| PackError::Corrupt(e.to_string()))?);
            revisions.insert(r.key, (r.revision, r.body));
        }
        Ok(World { shared_old, tasks_old, machines, revisions })
    }
}

/// The new content after a plan: the old snapshot with the changed objects.
type Snapshot = (plinth_render::Shared, HashMap<String, plinth_model::Task>);
/// What a plan changes: each touched object's body after (`None`: removed),
/// and the names of the changed ones.
type After = (HashMap<(Kind, String), Option<Value>>, BTreeSet<(Kind, String)>);

/// Plans installing or upgrading to `pack` (`None`: removing `name`), phase
/// by phase; each phase adds its findings to the plan.
async fn compute(
    store: &dyn Store,
    name: &str,
    new: Option<&Pack>,
    force: bool,
    canary: Option<&BTreeSet<String>>,
) -> Result<Plan, PackError> {
    let current = installed(store, name).await?;
    let old_pack = current.as_ref().map(|c| &c.0);
    let mut plan = Plan {
        pack: name.to_owned(),
        from: current.as_ref().map(|c| c.1.version.clone()),
        to: new.map(|p| p.manifest.version.clone()),
        ..Default::default()
    };
    if let (Some(new), Some(old)) = (new, old_pack)
        && new.manifest.semver() < old.manifest.semver()
    {
        plan.warnings.push(format!("{} is older than the installed {}", new.manifest.version, old.manifest.version));
    }
    check_requirements(store, new, &mut plan).await?;
    let world = World::load(store).await?;
    let installed_version = current.as_ref().map(|c| c.1.version.as_str());
    let (pinned, pin_ops) = plan_pins(name, &world, installed_version, new.is_some(), canary, &mut plan);
    let (after, changed_names) = object_changes(store, name, new, old_pack, force, &mut plan).await?;
    let (shared_new, tasks_new) = snapshot(&world, &after)?;
    refuse_secrets(new, &shared_new, &mut plan);
    check_references(&after, &world.machines, &shared_new, &tasks_new, &mut plan);
    check_schemas(&world, &shared_new, &mut plan);
    machine_diffs(store, world, &shared_new, &tasks_new, &pinned, &changed_names, &mut plan).await?;
    let record_op = record_op(name, new, current.as_ref())?;
    // Install kinds in order (params before what uses them); removals after.
    let order = |op: &WriteOp| match op {
        WriteOp::Put { kind, .. } => PACK_KINDS.iter().position(|k| k == kind).unwrap_or(99),
        WriteOp::Delete { kind, .. } => {
            100 + (PACK_KINDS.len() - PACK_KINDS.iter().position(|k| k == kind).unwrap_or(0))
        }
    };
    plan.ops.sort_by_key(order);
    plan.ops.extend(pin_ops);
    plan.ops.push(record_op);
    Ok(plan)
}

/// Requirements on other packs, each met by an installed version.
async fn check_requirements(store: &dyn Store, new: Option<&Pack>, plan: &mut Plan) -> Result<(), PackError> {
    if let Some(new) = new {
        for r in &new.manifest.requires {
            let req = semver::VersionReq::parse(&r.version).ok();
            match installed(store, &r.name).await? {
                Some((p, _, _)) if req.as_ref().is_none_or(|q| q.matches(&p.manifest.semver())) => {}
                Some((p, _, _)) => plan
                    .errors
                    .push(format!("requires pack `{}` {}; {} is installed", r.name, r.version, p.manifest.version)),
                None => plan.errors.push(format!("requires pack `{}` {}, which is not installed", r.name, r.version)),
            }
        }
    }
    Ok(())
}

/// Pins: with a canary set, every other machine stays on the installed
/// version (or the one it is already pinned to). The machines pinned, and
/// the writes that pin and unpin.
fn plan_pins(
    name: &str,
    world: &World,
    installed: Option<&str>,
    installing: bool,
    canary: Option<&BTreeSet<String>>,
    plan: &mut Plan,
) -> (BTreeSet<String>, Vec<WriteOp>) {
    let (machines, revisions) = (&world.machines, &world.revisions);
    let pin_key = meta::pin_key(name);
    let mut pinned: BTreeSet<String> = BTreeSet::new();
    let mut pin_ops = Vec::new();
    for m in machines {
        let id = m.id.to_string();
        let current_pin = m.meta.get(&pin_key).cloned();
        let in_canary = canary.is_none_or(|c| c.contains(&id) || c.contains(m.name.as_str()));
        // Without a canary every machine moves (that is how `promote` and
        // `rollback` clear pins).
        let want_pin = match installed {
            Some(cur) if installing && !in_canary => Some(current_pin.clone().unwrap_or_else(|| cur.to_owned())),
            _ => None,
        };
        if want_pin.is_some() {
            pinned.insert(id.clone());
        }
        if want_pin != current_pin {
            let (revision, mut body) = revisions.get(&id).cloned().unwrap_or_default();
            if let Some(Value::Object(meta)) = body.get_mut("meta") {
                match &want_pin {
                    Some(v) => meta.insert(pin_key.clone(), json!(v)),
                    None => meta.remove(&pin_key),
                };
            } else if let (Value::Object(b), Some(v)) = (&mut body, &want_pin) {
                b.insert("meta".into(), json!({ pin_key.clone(): v }));
            }
            pin_ops.push(WriteOp::Put { kind: Kind::Machine, key: id, body, expect: Expect::Revision(revision) });
        }
    }
    if let Some(c) = canary {
        let known: BTreeSet<String> = machines.iter().flat_map(|m| [m.id.to_string(), m.name.to_string()]).collect();
        for want in c.iter().filter(|w| !known.contains(*w)) {
            plan.errors.push(format!("canary machine `{want}` does not exist"));
        }
        if installed.is_none() {
            plan.errors.push("a canary needs an installed version to keep the other machines on".into());
        }
    }
    plan.pinned = pinned.len();
    plan.pinned = pinned.len();
    (pinned, pin_ops)
}

/// Each object the pack adds, changes, keeps as the site's override, takes
/// over or adopts, and each it removes, with the writes that do it.
async fn object_changes(
    store: &dyn Store,
    name: &str,
    new: Option<&Pack>,
    old_pack: Option<&Pack>,
    force: bool,
    plan: &mut Plan,
) -> Result<After, PackError> {
    let new_objects: BTreeMap<(Kind, String), &Value> =
        new.map(|p| p.objects.iter().map(|(k, key, b)| ((*k, key.clone()), b)).collect()).unwrap_or_default();
    let old_objects: BTreeMap<(Kind, String), &Value> =
        old_pack.map(|p| p.objects.iter().map(|(k, key, b)| ((*k, key.clone()), b)).collect()).unwrap_or_default();
    let version = new.map(|p| p.manifest.version.clone()).unwrap_or_default();
    let overrides: BTreeSet<&str> =
        new.map(|p| p.manifest.overrides.iter().map(String::as_str).collect()).unwrap_or_default();
    // The world after: stored objects with the pack's changes applied.
    let mut after: HashMap<(Kind, String), Option<Value>> = HashMap::new();
    let mut changed_names: BTreeSet<(Kind, String)> = BTreeSet::new();

    for ((kind, key), body) in &new_objects {
        let existing = store.get(*kind, key).await?;
        let target = owned(body, name, &version);
        let (change, op) = match &existing {
            None => (
                Some("added"),
                Some(WriteOp::Put { kind: *kind, key: key.clone(), body: target.clone(), expect: Expect::Absent }),
            ),
            Some(r) => {
                let expect = Expect::Revision(r.revision);
                let put = WriteOp::Put { kind: *kind, key: key.clone(), body: target.clone(), expect };
                match (meta::get(&r.body, meta::PACK), meta::get(&r.body, meta::OVERRIDE)) {
                    (Some(p), _) if p == name => {
                        let same = strip_server_fields(&r.body) == strip_server_fields(&target);
                        let relabel = meta::get(&r.body, meta::PACK_VERSION) != Some(version.as_str());
                        (if same { None } else { Some("changed") }, (!same || relabel).then_some(put))
                    }
                    (_, Some(o)) if o == name => {
                        let pack_changed = old_objects
                            .get(&(*kind, key.clone()))
                            .is_none_or(|old| strip_server_fields(old) != strip_server_fields(body));
                        (pack_changed.then_some("override-kept"), None)
                    }
                    (Some(other), _) if overrides.contains(other) => (Some("taken-over"), Some(put)),
                    (Some(other), _) => {
                        plan.errors.push(format!(
                            "{} `{key}` belongs to pack `{other}`; declare `overrides: [{other}]` in pack.yaml to replace it",
                            kind.plural()
                        ));
                        (None, None)
                    }
                    (None, Some(o)) => {
                        plan.errors.push(format!("{} `{key}` is the site's override of pack `{o}`", kind.plural()));
                        (None, None)
                    }
                    // Built-in content an earlier Plinth installed without a
                    // pack: the default pack adopts it, or, where the site
                    // changed it, keeps the site's as an override.
                    (None, None)
                        if name == crate::DEFAULT_PACK && meta::get(&r.body, meta::SOURCE) == Some(meta::BUILTIN) =>
                    {
                        if same_definition(&r.body, &target) {
                            (Some("adopted"), Some(put))
                        } else {
                            let mut kept = strip_server_fields(&r.body);
                            if let Some(Value::Object(m)) = kept.get_mut("meta") {
                                m.insert(meta::OVERRIDE.into(), json!(name));
                            }
                            (
                                Some("override-kept"),
                                Some(WriteOp::Put { kind: *kind, key: key.clone(), body: kept, expect }),
                            )
                        }
                    }
                    // A site object identical to the pack's (say, a param the
                    // site defined ahead of the upgrade) becomes the pack's.
                    (None, None) if force || same_definition(&r.body, &target) => (Some("adopted"), Some(put)),
                    (None, None) => {
                        plan.errors.push(format!(
                            "{} `{key}` already exists as a site object and differs from the pack's; make it the same, rename or delete it, or force to make it the pack's",
                            kind.plural()
                        ));
                        (None, None)
                    }
                }
            }
        };
        if let Some(c) = change {
            plan.objects.push(ObjectChange { kind: kind.plural().into(), key: key.clone(), change: c.into() });
            if c != "override-kept" {
                after.insert((*kind, key.clone()), Some(target.clone()));
                changed_names.insert((*kind, key.clone()));
            }
        }
        plan.ops.extend(op);
    }
    for (kind, key) in old_objects.keys() {
        if new_objects.contains_key(&(*kind, key.clone())) {
            continue;
        }
        let Some(r) = store.get(*kind, key).await? else { continue };
        if meta::get(&r.body, meta::PACK) != Some(name) {
            // The site overrides it: it stays, now the site's alone.
            continue;
        }
        plan.objects.push(ObjectChange { kind: kind.plural().into(), key: key.clone(), change: "removed".into() });
        plan.ops.push(WriteOp::Delete { kind: *kind, key: key.clone(), expect: Expect::Revision(r.revision) });
        after.insert((*kind, key.clone()), None);
        changed_names.insert((*kind, key.clone()));
    }

    Ok((after, changed_names))
}

/// The new snapshot: the old one with the pack's changes applied.
fn snapshot(world: &World, after: &HashMap<(Kind, String), Option<Value>>) -> Result<Snapshot, PackError> {
    let (shared_old, tasks_old) = (&world.shared_old, &world.tasks_old);
    let mut shared_new = shared_old.clone();
    let mut tasks_new = tasks_old.clone();
    let mut templates_new = (*shared_old.templates).clone();
    for ((kind, key), body) in after {
        macro_rules! put {
            ($map:expr, $t:ty, $k:expr) => {
                match body {
                    Some(b) => {
                        let v: $t = plinth_model::decode(b.clone()).map_err(|e| PackError::Corrupt(e.to_string()))?;
                        $map.insert($k, v);
                    }
                    None => {
                        $map.remove(&$k);
                    }
                }
            };
        }
        let name_key = || key.parse::<plinth_model::Name>().map_err(PackError::Corrupt);
        match kind {
            Kind::Template => match body {
                Some(b) => {
                    templates_new.insert(key.clone(), b["contents"].as_str().unwrap_or_default().to_owned());
                }
                None => {
                    templates_new.remove(key);
                }
            },
            Kind::Task => put!(tasks_new, plinth_model::Task, key.clone()),
            Kind::Param => put!(shared_new.params, plinth_model::Param, key.parse().map_err(PackError::Corrupt)?),
            Kind::Profile => put!(shared_new.profiles, plinth_model::Profile, name_key()?),
            Kind::BootEnv => put!(shared_new.bootenvs, plinth_model::BootEnv, name_key()?),
            Kind::Stage => put!(shared_new.stages, plinth_model::Stage, name_key()?),
            Kind::Workflow => put!(shared_new.workflows, plinth_model::Workflow, name_key()?),
            _ => {}
        }
    }
    shared_new.templates = Arc::new(templates_new);

    Ok((shared_new, tasks_new))
}

/// A pack never carries secrets: values of secure params belong to the
/// site, where they are sealed when written.
fn refuse_secrets(new: Option<&Pack>, shared_new: &plinth_render::Shared, plan: &mut Plan) {
    let Some(new) = new else { return };
    for (kind, key, body) in &new.objects {
        if !matches!(kind, Kind::Profile | Kind::Stage | Kind::Workflow) {
            continue;
        }
        for name in body.get("params").and_then(Value::as_object).into_iter().flat_map(|m| m.keys()) {
            let secure = name
                .parse::<plinth_model::ParamName>()
                .ok()
                .and_then(|n| shared_new.params.get(&n))
                .is_some_and(|p| p.secure);
            if secure {
                plan.errors.push(format!(
                    "{} `{key}` sets secure param `{name}`: a pack must not carry secret values; set it on the site",
                    kind.plural()
                ));
            }
        }
    }
}

/// References the new world leaves dangling: what is removed but still
/// named, and what is named but does not exist.
fn check_references(
    after: &HashMap<(Kind, String), Option<Value>>,
    machines: &[Machine],
    shared_new: &plinth_render::Shared,
    tasks_new: &HashMap<String, plinth_model::Task>,
    plan: &mut Plan,
) {
    for (kind, key) in after.iter().filter(|(_, b)| b.is_none()).map(|(k, _)| k) {
        let users: Vec<String> = match kind {
            Kind::Workflow => machines
                .iter()
                .filter(|m| m.workflow.as_ref().is_some_and(|w| w.as_str() == key))
                .map(|m| format!("machine `{}`", m.name))
                .collect(),
            Kind::BootEnv => {
                machines.iter().filter(|m| m.bootenv.as_str() == key).map(|m| format!("machine `{}`", m.name)).collect()
            }
            Kind::Stage => shared_new
                .workflows
                .values()
                .filter(|w| w.stages.iter().any(|s| s.as_str() == key))
                .map(|w| format!("workflow `{}`", w.name))
                .collect(),
            Kind::Task => shared_new
                .stages
                .values()
                .filter(|s| s.tasks.iter().any(|t| t.as_str() == key))
                .map(|s| format!("stage `{}`", s.name))
                .collect(),
            Kind::Template => {
                let mut u: Vec<String> = shared_new
                    .bootenvs
                    .values()
                    .filter(|b| b.templates.iter().any(|t| t.template.as_ref().is_some_and(|n| n.as_str() == key)))
                    .map(|b| format!("bootenv `{}`", b.name))
                    .collect();
                u.extend(
                    tasks_new
                        .values()
                        .filter(|t| t.templates.iter().any(|r| r.template.as_ref().is_some_and(|n| n.as_str() == key)))
                        .map(|t| format!("task `{}`", t.name)),
                );
                u
            }
            _ => Vec::new(),
        };
        if !users.is_empty() {
            plan.errors.push(format!("{} `{key}` would be removed but is used by {}", kind.plural(), users.join(", ")));
        }
        if *kind == Kind::Param {
            let pn = key.as_str();
            let mut holders: Vec<String> = machines
                .iter()
                .filter(|m| m.params.keys().any(|k| k.as_str() == pn))
                .map(|m| format!("machine `{}`", m.name))
                .collect();
            holders.extend(
                shared_new
                    .profiles
                    .values()
                    .filter(|p| p.params.keys().any(|k| k.as_str() == pn))
                    .map(|p| format!("profile `{}`", p.name)),
            );
            if !holders.is_empty() {
                plan.errors.push(format!(
                    "param `{pn}` would be removed but {} set{} a value for it; clear the value{} first",
                    holders.join(", "),
                    if holders.len() == 1 { "s" } else { "" },
                    if holders.len() == 1 { "" } else { "s" }
                ));
            }
        }
    }
    for b in shared_new.bootenvs.values() {
        for t in &b.templates {
            if let Some(n) = &t.template
                && !shared_new.templates.contains_key(n.as_str())
            {
                plan.errors.push(format!("bootenv `{}` names template `{n}`, which does not exist", b.name));
            }
        }
    }
    for s in shared_new.stages.values() {
        for t in &s.tasks {
            if !tasks_new.contains_key(t.as_str()) {
                plan.errors.push(format!("stage `{}` names task `{t}`, which does not exist", s.name));
            }
        }
    }
    for w in shared_new.workflows.values() {
        for s in &w.stages {
            if !shared_new.stages.contains_key(s) {
                plan.errors.push(format!("workflow `{}` names stage `{s}`, which does not exist", w.name));
            }
        }
    }
}

/// Stored values the new schemas refuse (params whose schema changed).
fn check_schemas(world: &World, shared_new: &plinth_render::Shared, plan: &mut Plan) {
    let (shared_old, machines) = (&world.shared_old, &world.machines);
    let schema_changed: Vec<&plinth_model::Param> = shared_new
        .params
        .values()
        .filter(|p| shared_old.params.get(&p.name).is_some_and(|o| o.schema != p.schema))
        .collect();
    if !schema_changed.is_empty() {
        let mut places: Vec<(String, &plinth_model::ParamValues)> = Vec::new();
        for m in machines {
            places.push((format!("machine `{}`", m.name), &m.params));
        }
        for p in shared_new.profiles.values() {
            places.push((format!("profile `{}`", p.name), &p.params));
        }
        for s in shared_new.stages.values() {
            places.push((format!("stage `{}`", s.name), &s.params));
        }
        for w in shared_new.workflows.values() {
            places.push((format!("workflow `{}`", w.name), &w.params));
        }
        for param in &schema_changed {
            for (location, values) in &places {
                let Some(v) = values.get(&param.name) else { continue };
                if plinth_secrets::is_sealed(v) {
                    plan.warnings.push(format!(
                        "param `{}` on {location} is secure; its value is not checked against the new schema",
                        param.name
                    ));
                    continue;
                }
                if let Err(why) = param.check_value(v) {
                    plan.schema_violations.push(Violation {
                        param: param.name.to_string(),
                        location: location.clone(),
                        why,
                    });
                }
            }
        }
    }
}

/// Every machine, rendered with the old content and with the new: the
/// diffs of what changes, and what would no longer render.
async fn machine_diffs(
    store: &dyn Store,
    world: World,
    shared_new: &plinth_render::Shared,
    tasks_new: &HashMap<String, plinth_model::Task>,
    pinned: &BTreeSet<String>,
    changed_names: &BTreeSet<(Kind, String)>,
    plan: &mut Plan,
) -> Result<(), PackError> {
    let World { shared_old, tasks_old, machines, .. } = world;
    let mut leases: HashMap<plinth_model::MacAddr, plinth_model::Lease> = HashMap::new();
    for r in plinth_store::StoreExt::list_all(store, Kind::Lease, vec![]).await? {
        let Ok(l) = plinth_model::decode::<plinth_model::Lease>(r.body) else { continue };
        if l.state == plinth_model::LeaseState::Bound && leases.get(&l.mac).is_none_or(|c| l.expires_at > c.expires_at)
        {
            leases.insert(l.mac, l);
        }
    }
    let workflow_touched = |m: &Machine| -> bool {
        let Some(w) = &m.workflow else { return false };
        let touched = |k: Kind, n: &str| changed_names.contains(&(k, n.to_owned()));
        if touched(Kind::Workflow, w.as_str()) {
            return true;
        }
        let stages = shared_new.workflows.get(w).map(|w| w.stages.clone()).unwrap_or_default();
        stages.iter().any(|s| {
            touched(Kind::Stage, s.as_str())
                || shared_new.stages.get(s).is_some_and(|st| st.tasks.iter().any(|t| touched(Kind::Task, t.as_str())))
        })
    };
    plan.machines_checked = machines.len();
    let content_changed = !changed_names.is_empty();
    for m in machines {
        if pinned.contains(&m.id.to_string()) {
            // Stays on the version it is pinned to: nothing changes for it.
            continue;
        }
        let lease = m.macs.iter().find_map(|mac| leases.get(mac)).cloned();
        let affected = workflow_touched(&m);
        if !content_changed {
            continue;
        }
        let (id, mname) = (m.id.to_string(), m.name.to_string());
        let old = plinth_render::view_from(&shared_old, m.clone(), lease.clone());
        let new = plinth_render::view_from(shared_new, m, lease);
        let mut mp =
            MachinePlan { id, name: mname, files: Vec::new(), errors: Vec::new(), workflow_affected: affected };
        let (old_files, _) = match &old {
            Ok(v) => rendered(v, &shared_old, &tasks_old),
            Err(_) => (BTreeMap::new(), Vec::new()),
        };
        match &new {
            Ok(v) => {
                let (new_files, errors) = rendered(v, shared_new, tasks_new);
                mp.errors = errors;
                // A file that fails to render is an error, not a removal.
                let names: BTreeSet<&String> = if mp.errors.is_empty() {
                    old_files.keys().chain(new_files.keys()).collect()
                } else {
                    new_files.keys().collect()
                };
                for n in names {
                    let a = old_files.get(n).map(String::as_str).unwrap_or_default();
                    let b = new_files.get(n).map(String::as_str).unwrap_or_default();
                    if let Some(diff) = crate::diff::unified(n, a, b) {
                        mp.files.push(FileDiff { file: n.clone(), diff });
                    }
                }
            }
            Err(e) => mp.errors.push(e.to_string()),
        }
        if !mp.files.is_empty() || !mp.errors.is_empty() {
            plan.machines.push(mp);
        }
    }
    for mp in &plan.machines {
        for e in &mp.errors {
            plan.errors.push(format!("machine `{}`: {e}", mp.name));
        }
    }
    for v in &plan.schema_violations {
        plan.errors.push(format!("param `{}` on {}: {}", v.param, v.location, v.why));
    }
    Ok(())
}

/// The pack's own record, with the version it replaces kept for rollback.
fn record_op(name: &str, new: Option<&Pack>, current: Option<&Installed>) -> Result<WriteOp, PackError> {
    Ok(match (new, current) {
        (Some(p), cur) => {
            let bundle = p.to_stored();
            // Re-applying the installed version (`promote`) keeps what it replaced.
            let previous = cur
                .as_ref()
                .map(|c| if c.1.bundle == bundle { c.1.previous.clone() } else { Some(c.1.bundle.clone()) });
            let body = json!({"name": p.manifest.name, "version": p.manifest.version, "description": p.manifest.description,
            "bundle": bundle, "previous": previous.flatten()});
            let (key, body) =
                plinth_model::normalize(Kind::Content, body).map_err(|e| PackError::Corrupt(e.to_string()))?;
            let expect = cur.as_ref().map_or(Expect::Absent, |c| Expect::Revision(c.2));
            WriteOp::Put { kind: Kind::Content, key, body, expect }
        }
        (None, Some(c)) => WriteOp::Delete { kind: Kind::Content, key: name.to_owned(), expect: Expect::Revision(c.2) },
        (None, None) => return Err(PackError::NotInstalled(name.to_owned())),
    })
}

/// What installing or upgrading to `pack` would do. Nothing is written.
pub async fn plan(store: &dyn Store, pack: &Pack, canary: Option<&BTreeSet<String>>) -> Result<Plan, PackError> {
    compute(store, &pack.manifest.name, Some(pack), false, canary).await
}

async fn apply(store: &dyn Store, plan: Plan, force: bool, actor: &str) -> Result<Plan, PackError> {
    if !plan.errors.is_empty() && !force {
        return Err(PackError::Refused(plan.errors));
    }
    store.apply_audited(plan.ops.clone(), actor.to_owned()).await?;
    Ok(plan)
}

/// Installs or upgrades to `pack` in one transaction, after planning;
/// refuses when the plan has errors unless `force`.
/// With `canary`, only those machines (ids or names) take the new version;
/// the others are pinned to the installed one until [`promote`].
pub async fn install(
    store: &dyn Store,
    pack: &Pack,
    force: bool,
    canary: Option<&BTreeSet<String>>,
    actor: &str,
) -> Result<Plan, PackError> {
    let plan = compute(store, &pack.manifest.name, Some(pack), force, canary).await?;
    apply(store, plan, force, actor).await
}

/// Moves every machine pinned to an earlier version of pack `name` to the
/// installed one (after a canary), in one transaction.
pub async fn promote(store: &dyn Store, name: &str, force: bool, actor: &str) -> Result<Plan, PackError> {
    let (pack, _, _) = installed(store, name).await?.ok_or_else(|| PackError::NotInstalled(name.to_owned()))?;
    let plan = compute(store, name, Some(&pack), force, None).await?;
    apply(store, plan, force, actor).await
}

/// Restores the version the installed pack `name` replaced, in one
/// transaction (what was rolled back from becomes the one to go forward to).
pub async fn rollback(store: &dyn Store, name: &str, force: bool, actor: &str) -> Result<Plan, PackError> {
    let (_, content, _) = installed(store, name).await?.ok_or_else(|| PackError::NotInstalled(name.to_owned()))?;
    let previous = content.previous.ok_or_else(|| PackError::NoPrevious(name.to_owned()))?;
    let pack = Pack::from_stored(&previous).map_err(|e| PackError::Corrupt(e.to_string()))?;
    let plan = compute(store, name, Some(&pack), force, None).await?;
    apply(store, plan, force, actor).await
}

/// Removes the pack `name` and the objects it installed (overrides stay
/// with the site), in one transaction; refuses to remove what is in use.
pub async fn remove(store: &dyn Store, name: &str, force: bool, actor: &str) -> Result<Plan, PackError> {
    let plan = compute(store, name, None, force, None).await?;
    apply(store, plan, force, actor).await
}

/// The site layer as a pack: every template, param, profile, bootenv,
/// task, stage and workflow that no pack installed (the site's overrides of
/// pack objects included; the built-in content left out), so a site's
/// customisations can move to another site or be shared back.
pub async fn export_site(store: &dyn Store, name: &str, version: &str) -> Result<Pack, PackError> {
    let manifest = crate::pack::Manifest {
        name: name.to_owned(),
        version: version.to_owned(),
        description: "exported from a site's own layer".into(),
        source: String::new(),
        requires: Vec::new(),
        plinth: None,
        overrides: Vec::new(),
    };
    let mut problems = Vec::new();
    manifest.check(&mut problems);
    if !problems.is_empty() {
        return Err(PackError::Invalid(Problems(problems)));
    }
    let mut objects = Vec::new();
    for kind in PACK_KINDS {
        for r in plinth_store::StoreExt::list_all(store, kind, vec![]).await? {
            if meta::get(&r.body, meta::PACK).is_some() || meta::get(&r.body, meta::SOURCE) == Some(meta::BUILTIN) {
                continue;
            }
            objects.push((kind, r.key, strip_server_fields(&r.body)));
        }
    }
    let pack = Pack { manifest, objects };
    // What the server holds is valid; check the bundle reads back anyway.
    Pack::from_bundle(&pack.to_bundle()).map_err(PackError::Invalid)
}
