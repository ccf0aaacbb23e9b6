//! The integrity rules every store enforces on every write, whoever makes
//! it (the API, the workflow engine, content packs, discovery): which
//! fields are unique within a kind, and which fields name objects of other
//! kinds. They read canonical bodies (what [`crate::normalize`] returns) as
//! JSON, so a store can apply them without decoding every object.

use crate::Kind;
use serde_json::Value;

/// One field of an object naming another object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Where the name is, e.g. `profiles[1]` or `params.ntp-servers`.
    pub field: String,
    /// The kind of the object named.
    pub kind: Kind,
    /// Its key.
    pub key: String,
    /// Whether the named object may not be deleted while this reference
    /// stands. A job's task is checked when the job is written but does not
    /// hold the task: jobs are history.
    pub holds: bool,
}

/// Fields whose values no two objects of `kind` may share: a MAC belongs to
/// one machine, a machine name to one machine, an address to one
/// reservation. Arrays count element by element.
pub fn unique_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Machine => &["macs", "name"],
        Kind::Reservation => &["address"],
        _ => &[],
    }
}

/// The values of a top-level field, as the text a store indexes: a string,
/// or each string of an array.
pub fn field_values<'a>(body: &'a Value, field: &str) -> Vec<&'a str> {
    match body.get(field) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The param whose value names the [`Kind::Image`] the image deploy writes.
pub const IMAGE_PARAM: &str = "image";

/// Whether objects of `kind` ever name other objects.
pub fn has_references(kind: Kind) -> bool {
    !matches!(
        kind,
        Kind::Template | Kind::Param | Kind::Subnet | Kind::Lease | Kind::Role | Kind::Content | Kind::Image
    )
}

/// Every object `body` (an object of `kind`) names.
pub fn references(kind: Kind, body: &Value) -> Vec<Reference> {
    let mut out = Vec::new();
    let mut one = |field: &str, to: Kind, holds: bool| {
        if let Some(key) = body.get(field).and_then(Value::as_str) {
            out.push(Reference { field: field.to_owned(), kind: to, key: key.to_owned(), holds });
        }
    };
    match kind {
        Kind::Machine => {
            one("bootenv", Kind::BootEnv, true);
            one("workflow", Kind::Workflow, true);
            one("stage", Kind::Stage, true);
        }
        Kind::Stage => one("bootenv", Kind::BootEnv, true),
        Kind::Reservation => one("subnet", Kind::Subnet, true),
        Kind::Job => {
            one("machine", Kind::Machine, true);
            one("task", Kind::Task, false);
        }
        Kind::Conflict => one("machine", Kind::Machine, true),
        Kind::Token => {
            // A machine token acts for its machine, not for a user.
            if body.get("machine").and_then(Value::as_str).is_some() {
                one("machine", Kind::Machine, true);
            } else {
                one("user", Kind::User, true);
            }
            one("join_workflow", Kind::Workflow, true);
        }
        _ => {}
    }
    let list = |out: &mut Vec<Reference>, field: &str, to: Kind| {
        for (i, v) in body.get(field).and_then(Value::as_array).into_iter().flatten().enumerate() {
            if let Some(key) = v.as_str() {
                out.push(Reference { field: format!("{field}[{i}]"), kind: to, key: key.to_owned(), holds: true });
            }
        }
    };
    match kind {
        Kind::Machine | Kind::Profile => list(&mut out, "profiles", Kind::Profile),
        Kind::Stage => list(&mut out, "tasks", Kind::Task),
        Kind::Workflow => list(&mut out, "stages", Kind::Stage),
        Kind::User => list(&mut out, "roles", Kind::Role),
        Kind::Token => list(&mut out, "join_profiles", Kind::Profile),
        Kind::BootEnv | Kind::Task => {
            list(&mut out, "required_params", Kind::Param);
            list(&mut out, "optional_params", Kind::Param);
            list(&mut out, "reports", Kind::Param);
            for (i, t) in body.get("templates").and_then(Value::as_array).into_iter().flatten().enumerate() {
                if let Some(key) = t.get("template").and_then(Value::as_str) {
                    out.push(Reference {
                        field: format!("templates[{i}].template"),
                        kind: Kind::Template,
                        key: key.to_owned(),
                        holds: true,
                    });
                }
            }
        }
        _ => {}
    }
    if matches!(kind, Kind::Machine | Kind::Profile | Kind::Stage | Kind::Workflow) {
        for (name, value) in body.get("params").and_then(Value::as_object).into_iter().flatten() {
            out.push(Reference { field: format!("params.{name}"), kind: Kind::Param, key: name.clone(), holds: true });
            // The image deploy's param names an image.
            if name == IMAGE_PARAM
                && let Some(image) = value.as_str().filter(|i| !i.is_empty())
            {
                out.push(Reference {
                    field: format!("params.{name}"),
                    kind: Kind::Image,
                    key: image.to_owned(),
                    holds: true,
                });
            }
        }
    }
    out
}

/// How an object is named to a person in an integrity message: its key,
/// and for machines (keyed by id) its name too.
pub fn describe(kind: Kind, key: &str, body: Option<&Value>) -> String {
    match body.and_then(|b| b.get("name")).and_then(Value::as_str) {
        Some(name) if kind == Kind::Machine => format!("{kind} `{name}` ({key})"),
        _ => format!("{kind} `{key}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(kind: Kind, body: Value) -> Vec<(String, Kind, String, bool)> {
        references(kind, &body).into_iter().map(|r| (r.field, r.kind, r.key, r.holds)).collect()
    }

    #[test]
    fn a_machine_names_its_bootenv_workflow_stage_profiles_and_params() {
        let got = fields(
            Kind::Machine,
            json!({"bootenv": "discovery", "workflow": "w", "stage": "s", "profiles": ["a", "b"],
                "params": {"ntp": 1}, "current_job": "x"}),
        );
        assert_eq!(
            got,
            [
                ("bootenv".into(), Kind::BootEnv, "discovery".into(), true),
                ("workflow".into(), Kind::Workflow, "w".into(), true),
                ("stage".into(), Kind::Stage, "s".into(), true),
                ("profiles[0]".into(), Kind::Profile, "a".into(), true),
                ("profiles[1]".into(), Kind::Profile, "b".into(), true),
                ("params.ntp".into(), Kind::Param, "ntp".into(), true),
            ]
        );
    }

    #[test]
    fn a_null_field_names_nothing() {
        assert!(fields(Kind::Machine, json!({"workflow": null, "stage": null})).is_empty());
    }

    #[test]
    fn a_jobs_task_does_not_hold_it_and_a_machine_token_names_no_user() {
        let job = fields(Kind::Job, json!({"machine": "m", "task": "t"}));
        assert_eq!(job[1], ("task".into(), Kind::Task, "t".into(), false));
        let token = fields(Kind::Token, json!({"user": "machine", "machine": "m"}));
        assert_eq!(token, [("machine".into(), Kind::Machine, "m".into(), true)]);
        let user_token = fields(Kind::Token, json!({"user": "alice", "join_profiles": ["p"]}));
        assert_eq!(user_token[0].2, "alice");
        assert_eq!(user_token[1].0, "join_profiles[0]");
    }

    #[test]
    fn bootenvs_and_tasks_name_templates_and_params() {
        let got = fields(
            Kind::Task,
            json!({"required_params": ["a"], "optional_params": ["b"],
                "templates": [{"name": "x", "contents": "y"}, {"name": "z", "template": "t"}]}),
        );
        let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(names, ["required_params[0]", "optional_params[0]", "templates[1].template"]);
    }

    #[test]
    fn only_kinds_with_references_report_them() {
        for kind in Kind::ALL {
            if !has_references(kind) {
                assert!(references(kind, &json!({"params": {"a": 1}, "profiles": ["p"]})).is_empty(), "{kind}");
            }
        }
    }
}
