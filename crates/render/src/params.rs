//! Param resolution. For each param the first layer that sets it wins:
//! the machine's own params, then its profiles in order (a profile's own
//! values before the profiles it includes, depth first), then the current
//! stage, then the workflow, then the `global` profile, then the param's
//! schema default. Every value is checked against its param's schema and an
//! error says which layer holds the value that no longer fits.

use plinth_model::{Machine, Name, Param, ParamName, ParamValues, Profile, Stage, Workflow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "layer", rename_all = "snake_case")]
pub enum Layer {
    /// The machine's own params.
    Machine,
    /// A profile; `via` lists the profiles that included it, outermost first.
    Profile { name: String, via: Vec<String> },
    /// The machine's current stage.
    Stage { name: String },
    /// The machine's workflow.
    Workflow { name: String },
    /// The built-in `global` profile (and what it includes).
    Global { via: Vec<String> },
    /// The param's schema default.
    Default,
}

/// A resolved param: its value, where it came from, and what it shadows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolved {
    pub value: Value,
    pub source: Layer,
    /// Lower layers that also set it, in precedence order.
    pub shadows: Vec<(Layer, Value)>,
    /// Whether the param is secure (its values must be redacted when shown).
    pub secure: bool,
}

/// Why resolution failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    #[error("profile `{0}` includes itself (through {1})")]
    ProfileCycle(String, String),
    #[error("param `{param}` from {from}: {why}")]
    Invalid { param: String, from: String, why: String },
}

/// What resolution reads, loaded by the caller.
pub struct Layers<'a> {
    pub machine: &'a Machine,
    pub profiles: &'a HashMap<Name, Profile>,
    pub stage: Option<&'a Stage>,
    pub workflow: Option<&'a Workflow>,
    pub params: &'a HashMap<ParamName, Param>,
}

fn describe(layer: &Layer) -> String {
    match layer {
        Layer::Machine => "the machine".into(),
        Layer::Profile { name, via } if via.is_empty() => format!("profile `{name}`"),
        Layer::Profile { name, via } => format!("profile `{name}` (included by {})", via.join(" → ")),
        Layer::Stage { name } => format!("stage `{name}`"),
        Layer::Workflow { name } => format!("workflow `{name}`"),
        Layer::Global { via } if via.is_empty() => "profile `global`".into(),
        Layer::Global { via } => format!("profile `{}` (included by global)", via.last().cloned().unwrap_or_default()),
        Layer::Default => "the schema default".into(),
    }
}

/// Appends the values of `name` and the profiles it includes, depth first.
fn profile_layers(
    name: &Name,
    profiles: &HashMap<Name, Profile>,
    via: &mut Vec<String>,
    global: bool,
    out: &mut Vec<(Layer, ParamValues)>,
) -> Result<(), ResolveError> {
    if via.iter().any(|v| v == name.as_str()) {
        return Err(ResolveError::ProfileCycle(name.to_string(), via.join(" → ")));
    }
    // A profile that does not exist contributes nothing; the API reports
    // dangling references where they are written.
    let Some(p) = profiles.get(name) else { return Ok(()) };
    let layer = if global {
        // `via` runs from global's first include down to this profile.
        let via =
            if via.is_empty() { Vec::new() } else { via[1..].iter().cloned().chain([name.to_string()]).collect() };
        Layer::Global { via }
    } else {
        Layer::Profile { name: name.to_string(), via: via.clone() }
    };
    out.push((layer, p.params.clone()));
    via.push(name.to_string());
    for inc in &p.profiles {
        profile_layers(inc, profiles, via, global, out)?;
    }
    via.pop();
    Ok(())
}

/// Resolves every param that any layer sets or that has a default.
pub fn resolve(l: &Layers<'_>) -> Result<BTreeMap<ParamName, Resolved>, ResolveError> {
    let mut layers: Vec<(Layer, ParamValues)> = vec![(Layer::Machine, l.machine.params.clone())];
    for p in &l.machine.profiles {
        profile_layers(p, l.profiles, &mut Vec::new(), false, &mut layers)?;
    }
    if let Some(s) = l.stage {
        layers.push((Layer::Stage { name: s.name.to_string() }, s.params.clone()));
    }
    if let Some(w) = l.workflow {
        layers.push((Layer::Workflow { name: w.name.to_string() }, w.params.clone()));
    }
    profile_layers(&Name::known("global"), l.profiles, &mut Vec::new(), true, &mut layers)?;
    for (name, param) in l.params {
        if let Some(d) = param.schema.get("default") {
            layers.push((Layer::Default, [(name.clone(), d.clone())].into()));
        }
    }
    let mut out: BTreeMap<ParamName, Resolved> = BTreeMap::new();
    for (layer, values) in layers {
        for (name, value) in values {
            // A sealed value was checked when it was written; it is opened
            // only where it is rendered.
            let sealed = plinth_secrets::is_sealed(&value);
            if !sealed
                && let Some(param) = l.params.get(&name)
                && let Err(why) = param.check_value(&value)
            {
                return Err(ResolveError::Invalid { param: name.to_string(), from: describe(&layer), why });
            }
            let secure = sealed || l.params.get(&name).is_some_and(|p| p.secure);
            match out.get_mut(&name) {
                Some(r) => r.shadows.push((layer.clone(), value)),
                None => {
                    out.insert(name, Resolved { value, source: layer.clone(), shadows: Vec::new(), secure });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plinth_model::{Kind, decode};
    use serde_json::json;

    fn obj<T: plinth_model::Object>(v: Value) -> T {
        decode(v).unwrap_or_else(|e| panic!("{:?}: {e}", T::KIND))
    }

    fn params() -> HashMap<ParamName, Param> {
        [
            obj::<Param>(json!({"name": "ntp", "schema": {"type": "array", "items": {"type": "string"}, "default": ["pool.ntp.org"]}})),
            obj::<Param>(json!({"name": "tz", "schema": {"type": "string"}})),
            obj::<Param>(json!({"name": "disk", "schema": {"type": "string"}})),
            obj::<Param>(json!({"name": "root-password", "schema": {"type": "string"}, "secure": true})),
        ]
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect()
    }

    fn profiles(list: Vec<Value>) -> HashMap<Name, Profile> {
        list.into_iter().map(obj::<Profile>).map(|p| (p.name.clone(), p)).collect()
    }

    #[test]
    fn layers_apply_in_the_documented_order() {
        let machine: Machine =
            obj(json!({"name": "m", "profiles": ["rack-1", "site"], "params": {"disk": "/dev/sda"}}));
        let profiles = profiles(vec![
            json!({"name": "global", "params": {"tz": "UTC", "ntp": ["global.ntp"]}}),
            json!({"name": "site", "params": {"tz": "Europe/Paris", "disk": "/dev/vda"}}),
            json!({"name": "rack-1", "profiles": ["rack-base"], "params": {}}),
            json!({"name": "rack-base", "params": {"tz": "America/New_York"}}),
        ]);
        let stage: Stage = obj(json!({"name": "install", "params": {"tz": "Asia/Tokyo"}}));
        let params = params();
        let r = resolve(&Layers {
            machine: &machine,
            profiles: &profiles,
            stage: Some(&stage),
            workflow: None,
            params: &params,
        })
        .unwrap();
        let name = |n: &str| n.parse::<ParamName>().unwrap();
        assert_eq!(r[&name("disk")].value, json!("/dev/sda"));
        assert_eq!(r[&name("disk")].source, Layer::Machine);
        assert_eq!(
            r[&name("disk")].shadows,
            vec![(Layer::Profile { name: "site".into(), via: vec![] }, json!("/dev/vda"))]
        );
        // rack-1 comes first, and what it includes comes before the next profile.
        assert_eq!(r[&name("tz")].value, json!("America/New_York"));
        assert_eq!(r[&name("tz")].source, Layer::Profile { name: "rack-base".into(), via: vec!["rack-1".into()] });
        let shadowed: Vec<String> = r[&name("tz")].shadows.iter().map(|(l, _)| describe(l)).collect();
        assert_eq!(shadowed, ["profile `site`", "stage `install`", "profile `global`"]);
        assert_eq!(r[&name("ntp")].value, json!(["global.ntp"]), "global before the default");
        assert_eq!(r[&name("ntp")].shadows[0].0, Layer::Default);
    }

    #[test]
    fn the_schema_default_is_the_last_fallback() {
        let machine: Machine = obj(json!({"name": "m"}));
        let params = params();
        let r = resolve(&Layers {
            machine: &machine,
            profiles: &HashMap::new(),
            stage: None,
            workflow: None,
            params: &params,
        })
        .unwrap();
        let ntp = &r[&"ntp".parse::<ParamName>().unwrap()];
        assert_eq!((ntp.value.clone(), ntp.source.clone()), (json!(["pool.ntp.org"]), Layer::Default));
        assert!(!r.contains_key(&"tz".parse::<ParamName>().unwrap()), "no value anywhere: not resolved");
    }

    #[test]
    fn a_value_that_no_longer_fits_names_its_layer() {
        let machine: Machine = obj(json!({"name": "m", "profiles": ["site"]}));
        let profiles = profiles(vec![json!({"name": "site", "params": {"tz": 5}})]);
        let params = params();
        let e =
            resolve(&Layers { machine: &machine, profiles: &profiles, stage: None, workflow: None, params: &params })
                .unwrap_err();
        assert_eq!(e.to_string().split(':').next().unwrap(), "param `tz` from profile `site`");
    }

    #[test]
    fn profile_cycles_are_reported() {
        let machine: Machine = obj(json!({"name": "m", "profiles": ["a"]}));
        let profiles = profiles(vec![json!({"name": "a", "profiles": ["b"]}), json!({"name": "b", "profiles": ["a"]})]);
        let params = params();
        let e =
            resolve(&Layers { machine: &machine, profiles: &profiles, stage: None, workflow: None, params: &params })
                .unwrap_err();
        assert!(matches!(e, ResolveError::ProfileCycle(..)), "{e}");
        let _ = Kind::Profile;
    }

    #[test]
    fn secure_params_are_marked() {
        let machine: Machine = obj(json!({"name": "m", "params": {"root-password": "s3cret"}}));
        let params = params();
        let r = resolve(&Layers {
            machine: &machine,
            profiles: &HashMap::new(),
            stage: None,
            workflow: None,
            params: &params,
        })
        .unwrap();
        assert!(r[&"root-password".parse::<ParamName>().unwrap()].secure);
    }
}
