//! The content pack format: a directory with a manifest (`pack.yaml`) and
//! objects by kind, and the single-file bundle of it.
//!
//! ```text
//! pack.yaml              name, version (semver), description, source,
//!                        requires [{name, version: ">=1, <2"}], plinth: ">=0.1",
//!                        overrides [other pack names]
//! templates/NAME.tmpl    a template's text (its name is the file's stem)
//! templates/*.yaml       or whole template objects
//! params/ profiles/ bootenvs/ tasks/ stages/ workflows/
//!                        *.yaml or *.json: one object, or a list of them
//! ```
//!
//! A bundle is JSON: `{"format": "plinth-pack/1", "manifest": {...},
//! "objects": [{"kind": "templates", "key": "...", "body": {...}}, ...]}`,
//! objects in kind order and then key order, so the same pack always
//! bundles to the same bytes.

use plinth_model::Kind;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::Path;

/// The bundle format this Plinth reads and writes.
pub const FORMAT: &str = "plinth-pack/1";

/// Kinds a pack may hold, in the order they are installed (what is
/// referred to before what refers to it).
pub const PACK_KINDS: [Kind; 7] =
    [Kind::Param, Kind::Template, Kind::Profile, Kind::BootEnv, Kind::Task, Kind::Stage, Kind::Workflow];

/// Largest bundle or pack directory read, in bytes.
pub const MAX_PACK_BYTES: usize = 64 * 1024 * 1024;
/// Most objects one pack may hold.
pub const MAX_OBJECTS: usize = 20_000;

/// A dependency on another pack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub name: String,
    /// A semver requirement, e.g. `>=1.2, <2`.
    pub version: String,
}

/// What a pack says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// Semver.
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// Where it comes from (a URL, a repository).
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub requires: Vec<Requirement>,
    /// The Plinth versions it works with (a semver requirement).
    #[serde(default)]
    pub plinth: Option<String>,
    /// Packs whose objects of the same name this one replaces.
    #[serde(default)]
    pub overrides: Vec<String>,
}

/// A pack: its manifest and its objects, normalised, as `(kind, key, body)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pack {
    pub manifest: Manifest,
    pub objects: Vec<(Kind, String, Value)>,
}

/// Every problem found in a pack, each naming where it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the pack has {} problem{}:\n- {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("\n- "))]
pub struct Problems(pub Vec<String>);

fn kind_dir(kind: Kind) -> &'static str {
    kind.plural()
}

impl Manifest {
    /// Checks the fields on their own; problems are appended to `out`.
    pub fn check(&self, out: &mut Vec<String>) {
        if self.name.parse::<plinth_model::Name>().is_err() {
            out.push(format!(
                "pack.yaml: `name` {:?} is not a valid name (lower-case letters, digits, `-`, `.`)",
                self.name
            ));
        }
        if semver::Version::parse(&self.version).is_err() {
            out.push(format!("pack.yaml: `version` {:?} is not a semantic version like 1.2.0", self.version));
        }
        for (i, r) in self.requires.iter().enumerate() {
            if r.name.parse::<plinth_model::Name>().is_err() {
                out.push(format!("pack.yaml: requires[{i}]: `name` {:?} is not a pack name", r.name));
            }
            if semver::VersionReq::parse(&r.version).is_err() {
                out.push(format!(
                    "pack.yaml: requires[{i}] `{}`: {:?} is not a version requirement like >=1.2, <2",
                    r.name, r.version
                ));
            }
        }
        if let Some(p) = &self.plinth {
            match semver::VersionReq::parse(p) {
                Err(_) => out.push(format!("pack.yaml: `plinth` {p:?} is not a version requirement")),
                Ok(req) => {
                    let ours =
                        semver::Version::parse(env!("CARGO_PKG_VERSION")).unwrap_or(semver::Version::new(0, 0, 0));
                    if !req.matches(&ours) {
                        out.push(format!("pack.yaml: needs Plinth {p}; this is {ours}"));
                    }
                }
            }
        }
    }

    /// The version, parsed (0.0.0 when it does not parse; `check` reports that).
    pub fn semver(&self) -> semver::Version {
        semver::Version::parse(&self.version).unwrap_or(semver::Version::new(0, 0, 0))
    }
}

/// Normalises one raw object of `kind` found at `origin`; problems go to `out`.
fn admit(kind: Kind, origin: &str, raw: Value, out: &mut Vec<String>) -> Option<(Kind, String, Value)> {
    let mut raw = raw;
    if let Value::Object(m) = &mut raw {
        // Which pack an object belongs to is the server's to say.
        if let Some(Value::Object(meta)) = m.get_mut("meta") {
            for k in plinth_model::meta::PACK_KEYS {
                meta.remove(k);
            }
        }
    }
    match plinth_model::normalize(kind, raw) {
        Ok((key, body)) => Some((kind, key, body)),
        Err(e) => {
            out.push(format!("{origin}: {e}"));
            None
        }
    }
}

/// Reads a pack directory. Every problem is listed, not only the first.
pub fn load_dir(dir: &Path) -> Result<Pack, Problems> {
    let mut problems = Vec::new();
    let manifest_path = dir.join("pack.yaml");
    let manifest: Option<Manifest> = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => match serde_yaml_ng::from_str(&text) {
            Ok(m) => Some(m),
            Err(e) => {
                problems.push(format!("pack.yaml: {e}"));
                None
            }
        },
        Err(e) => {
            problems.push(format!("{}: {e} (every pack has a pack.yaml manifest)", manifest_path.display()));
            None
        }
    };
    let mut objects = Vec::new();
    let mut total = 0usize;
    for kind in PACK_KINDS {
        let sub = dir.join(kind_dir(kind));
        let Ok(entries) = std::fs::read_dir(&sub) else { continue };
        let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for path in files {
            let origin =
                format!("{}/{}", kind_dir(kind), path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    problems.push(format!("{origin}: {e}"));
                    continue;
                }
            };
            if !meta.is_file() {
                problems.push(format!("{origin}: not a regular file (symlinks and folders are not read)"));
                continue;
            }
            total += meta.len() as usize;
            if total > MAX_PACK_BYTES {
                problems.push(format!("the pack is larger than {MAX_PACK_BYTES} bytes"));
                return Err(Problems(problems));
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(format!("{origin}: {e}"));
                    continue;
                }
            };
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
            match ext {
                "tmpl" if kind == Kind::Template => {
                    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    objects.extend(admit(kind, &origin, json!({"name": name, "contents": text}), &mut problems));
                }
                "yaml" | "yml" | "json" => {
                    let parsed: Result<Value, String> = if ext == "json" {
                        serde_json::from_str(&text).map_err(|e| e.to_string())
                    } else {
                        serde_yaml_ng::from_str(&text).map_err(|e| e.to_string())
                    };
                    match parsed {
                        Ok(Value::Array(items)) => {
                            for (i, item) in items.into_iter().enumerate() {
                                objects.extend(admit(kind, &format!("{origin}[{i}]"), item, &mut problems));
                            }
                        }
                        Ok(v) => objects.extend(admit(kind, &origin, v, &mut problems)),
                        Err(e) => problems.push(format!("{origin}: {e}")),
                    }
                }
                _ => problems
                    .push(format!("{origin}: unexpected file (templates are .tmpl; objects .yaml, .yml or .json)")),
            }
        }
    }
    finish(manifest, objects, problems)
}

/// Checks what a pack holds on its own: the manifest, no object twice, and
/// every template text parses.
fn finish(
    manifest: Option<Manifest>,
    mut objects: Vec<(Kind, String, Value)>,
    mut problems: Vec<String>,
) -> Result<Pack, Problems> {
    if let Some(m) = &manifest {
        m.check(&mut problems);
    }
    if objects.len() > MAX_OBJECTS {
        problems.push(format!("the pack holds {} objects; at most {MAX_OBJECTS}", objects.len()));
    }
    let order = |k: &Kind| PACK_KINDS.iter().position(|x| x == k).unwrap_or(usize::MAX);
    objects.sort_by(|a, b| order(&a.0).cmp(&order(&b.0)).then_with(|| a.1.cmp(&b.1)));
    for w in objects.windows(2) {
        if w[0].0 == w[1].0 && w[0].1 == w[1].1 {
            problems.push(format!("{} `{}` is defined twice", w[0].0.plural(), w[0].1));
        }
    }
    for (kind, key, body) in &objects {
        for (field, text) in template_texts(*kind, body) {
            if let Err(e) = plinth_render::check_syntax(&format!("{} `{key}` {field}", kind.plural()), text) {
                problems.push(e.to_string());
            }
        }
    }
    match manifest {
        Some(manifest) if problems.is_empty() => Ok(Pack { manifest, objects }),
        _ => Err(Problems(problems)),
    }
}

/// The template texts an object holds, with the field each is in.
pub fn template_texts(kind: Kind, body: &Value) -> Vec<(String, &str)> {
    let mut texts: Vec<(String, &str)> = Vec::new();
    match kind {
        Kind::Template => {
            texts.extend(body.get("contents").and_then(Value::as_str).map(|t| ("contents".to_owned(), t)))
        }
        Kind::Task | Kind::BootEnv => {
            for (i, t) in body.get("templates").and_then(Value::as_array).into_iter().flatten().enumerate() {
                for field in ["contents", "path"] {
                    if let Some(text) = t.get(field).and_then(Value::as_str) {
                        texts.push((format!("templates[{i}].{field}"), text));
                    }
                }
            }
            if kind == Kind::BootEnv {
                texts.extend(body.get("boot_args").and_then(Value::as_str).map(|t| ("boot_args".to_owned(), t)));
                let url = body.get("os").and_then(|o| o.get("install_url")).and_then(Value::as_str);
                texts.extend(url.map(|t| ("os.install_url".to_owned(), t)));
                for (i, v) in body.get("variants").and_then(Value::as_array).into_iter().flatten().enumerate() {
                    if let Some(text) = v.get("boot_args").and_then(Value::as_str) {
                        texts.push((format!("variants[{i}].boot_args"), text));
                    }
                }
            }
        }
        _ => {}
    }
    texts
}

impl Pack {
    /// The single-file bundle.
    pub fn to_bundle(&self) -> Value {
        let objects: Vec<Value> = self
            .objects
            .iter()
            .map(|(kind, key, body)| json!({"kind": kind.plural(), "key": key, "body": strip_server_fields(body)}))
            .collect();
        json!({"format": FORMAT, "manifest": self.manifest, "objects": objects})
    }

    /// The bundle as the store keeps it (in the pack's `Content` record).
    pub fn to_stored(&self) -> plinth_model::Bundle {
        let objects = self
            .objects
            .iter()
            .map(|(kind, key, body)| plinth_model::BundleObject {
                kind: kind.plural().to_owned(),
                key: key.clone(),
                body: strip_server_fields(body),
            })
            .collect();
        plinth_model::Bundle {
            format: FORMAT.to_owned(),
            manifest: serde_json::to_value(&self.manifest).unwrap_or(Value::Null),
            objects,
        }
    }

    /// Reads a bundle the store kept. Every problem is listed.
    pub fn from_stored(bundle: &plinth_model::Bundle) -> Result<Pack, Problems> {
        let value = serde_json::to_value(bundle).map_err(|e| Problems(vec![e.to_string()]))?;
        Pack::from_bundle(&value)
    }

    /// Reads a bundle. Every problem is listed.
    pub fn from_bundle(bundle: &Value) -> Result<Pack, Problems> {
        let mut problems = Vec::new();
        if bundle.get("format").and_then(Value::as_str) != Some(FORMAT) {
            problems.push(format!("not a pack bundle: `format` must be {FORMAT:?}"));
            return Err(Problems(problems));
        }
        let manifest = match bundle.get("manifest").cloned().map(serde_json::from_value::<Manifest>) {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                problems.push(format!("manifest: {e}"));
                None
            }
            None => {
                problems.push("the bundle has no manifest".into());
                None
            }
        };
        let mut objects = Vec::new();
        let Some(items) = bundle.get("objects").and_then(Value::as_array).cloned() else {
            problems.push("the bundle has no `objects` list".into());
            return Err(Problems(problems));
        };
        if items.len() > MAX_OBJECTS {
            problems.push(format!("the bundle holds {} objects; at most {MAX_OBJECTS}", items.len()));
            return Err(Problems(problems));
        }
        for (i, item) in items.into_iter().enumerate() {
            if let Some(extra) =
                item.as_object().and_then(|o| o.keys().find(|k| !["kind", "key", "body"].contains(&k.as_str())))
            {
                problems.push(format!("objects[{i}]: unknown field `{extra}` (an object is `kind`, `key` and `body`)"));
                continue;
            }
            if item.get("key").is_some_and(|k| !k.is_string() && !k.is_null()) {
                problems.push(format!("objects[{i}]: `key` is the object's key, a string"));
                continue;
            }
            let kind = item.get("kind").and_then(Value::as_str).and_then(Kind::from_plural);
            match kind {
                Some(k) if PACK_KINDS.contains(&k) => {
                    let body = item.get("body").cloned().unwrap_or(Value::Null);
                    if let Some((k, key, body)) = admit(k, &format!("objects[{i}]"), body, &mut problems) {
                        if item.get("key").and_then(Value::as_str).is_some_and(|given| given != key) {
                            problems.push(format!("objects[{i}]: `key` does not match the object ({key})"));
                        }
                        objects.push((k, key, body));
                    }
                }
                _ => problems.push(format!(
                    "objects[{i}]: `kind` must be one of {}",
                    PACK_KINDS.iter().map(|k| k.plural()).collect::<Vec<_>>().join(", ")
                )),
            }
        }
        finish(manifest, objects, problems)
    }

    /// Reads a bundle from its bytes (JSON, or YAML).
    pub fn from_bytes(bytes: &[u8]) -> Result<Pack, Problems> {
        if bytes.len() > MAX_PACK_BYTES {
            return Err(Problems(vec![format!("the bundle is larger than {MAX_PACK_BYTES} bytes")]));
        }
        let value: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(json_err) => match std::str::from_utf8(bytes).ok().and_then(|t| serde_yaml_ng::from_str(t).ok()) {
                Some(v) => v,
                None => return Err(Problems(vec![format!("the bundle is not JSON: {json_err}")])),
            },
        };
        Pack::from_bundle(&value)
    }

    /// Writes the pack as a directory (templates as `.tmpl` files, other
    /// objects as one YAML file each).
    pub fn write_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let yaml = |v: &Value| serde_yaml_ng::to_string(v).map_err(std::io::Error::other);
        std::fs::write(
            dir.join("pack.yaml"),
            yaml(&serde_json::to_value(&self.manifest).map_err(std::io::Error::other)?)?,
        )?;
        for (kind, key, body) in &self.objects {
            let sub = dir.join(kind_dir(*kind));
            std::fs::create_dir_all(&sub)?;
            let body = strip_server_fields(body);
            let plain_template = *kind == Kind::Template
                && body.as_object().is_some_and(|m| {
                    m.keys().all(|k| k == "name" || k == "contents" || k == "description" || k == "meta")
                })
                && body.get("description").and_then(Value::as_str).unwrap_or_default().is_empty()
                && body.get("meta").and_then(Value::as_object).is_none_or(|m| m.is_empty());
            if plain_template {
                std::fs::write(sub.join(format!("{key}.tmpl")), body["contents"].as_str().unwrap_or_default())?;
            } else {
                std::fs::write(sub.join(format!("{key}.yaml")), yaml(&body)?)?;
            }
        }
        Ok(())
    }
}

/// An object without what the store and server set (revision, times, pack
/// membership).
pub fn strip_server_fields(body: &Value) -> Value {
    let mut b = body.clone();
    if let Value::Object(m) = &mut b {
        for f in ["revision", "created_at", "updated_at"] {
            m.remove(f);
        }
        if let Some(Value::Object(meta)) = m.get_mut("meta") {
            for k in plinth_model::meta::PACK_KEYS {
                meta.remove(k);
            }
        }
    }
    b
}
