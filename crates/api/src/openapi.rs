//! The OpenAPI 3.1 document, generated from the kind list and each kind's
//! JSON Schema so it cannot drift from what the server accepts.

use crate::AppState;
use axum::Json;
use axum::extract::State;
use plinth_model::Kind;
use serde_json::{Map, Value, json};

/// Rewrites `#/$defs/X` references to `#/components/schemas/X`.
fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/$defs/")
            {
                *r = format!("#/components/schemas/{name}");
            }
            map.values_mut().for_each(rewrite_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// Adds a JSON Schema under `name`, hoisting its `$defs` into the shared
/// components so every reference resolves.
fn add_schema(schemas: &mut Map<String, Value>, name: &str, mut schema: Value) {
    if let Some(Value::Object(defs)) = schema.as_object_mut().and_then(|m| m.remove("$defs")) {
        for (k, mut v) in defs {
            rewrite_refs(&mut v);
            schemas.insert(k, v);
        }
    }
    if let Value::Object(m) = &mut schema {
        m.remove("$schema");
    }
    rewrite_refs(&mut schema);
    schemas.insert(name.to_owned(), schema);
}

fn error_responses(codes: &[&str]) -> Map<String, Value> {
    codes.iter().map(|c| (c.to_string(), json!({"$ref": format!("#/components/responses/{c}")}))).collect()
}

fn type_name(kind: Kind) -> String {
    let p = kind.plural();
    let singular = p.strip_suffix('s').unwrap_or(p);
    let mut c = singular.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}

/// Builds the document.
pub fn build() -> Value {
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for kind in Kind::ALL {
        let name = type_name(kind);
        add_schema(&mut schemas, &name, plinth_model::schema_of(kind));
        let obj_ref = json!({"$ref": format!("#/components/schemas/{name}")});
        let plural = kind.plural();
        let key_param = json!({"name": "key", "in": "path", "required": true, "schema": {"type": "string"},
            "description": format!("the object's `{}`", kind.key_field())});
        let if_match = json!({"name": "If-Match", "in": "header", "required": false, "schema": {"type": "string"},
            "description": "ETag (revision) the write expects; 412 when stale"});
        let ok_obj = json!({"description": "the object; ETag carries its revision",
            "content": {"application/json": {"schema": obj_ref}}});
        let body = json!({"required": true, "content": {"application/json": {"schema": obj_ref}}});
        let mut list_resp = error_responses(&["400", "401"]);
        list_resp.insert(
            "200".into(),
            json!({"description": "a page of objects in key order",
            "content": {"application/json": {"schema": {"type": "object", "properties": {
                "items": {"type": "array", "items": obj_ref}, "next": {"type": ["string", "null"]}}}}}}),
        );
        let mut collection = json!({
            "get": {"operationId": format!("list_{plural}"), "tags": [plural], "summary": format!("List {plural}"),
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": plinth_store::MAX_PAGE, "default": crate::crud::DEFAULT_PAGE}},
                    {"name": "after", "in": "query", "schema": {"type": "string"}, "description": "`next` of the previous page"},
                    {"name": "filters", "in": "query", "style": "form", "explode": true,
                     "schema": {"type": "object", "additionalProperties": {"type": "string"}},
                     "description": "any other parameter is an equality filter on that field, e.g. `?bootenv=discovery`; array fields match an element"}],
                "responses": list_resp}
        });
        let mut item = json!({
            "parameters": [key_param],
            "get": {"operationId": format!("get_{plural}"), "tags": [plural], "summary": format!("Get one of {plural}"),
                "responses": merge(json!({"200": ok_obj}), error_responses(&["401", "404"]))},
            "delete": {"operationId": format!("delete_{plural}"), "tags": [plural], "summary": format!("Delete one of {plural}"),
                "parameters": [if_match],
                "responses": merge(json!({"200": {"description": "the deleted object", "content": {"application/json": {"schema": obj_ref}}}}),
                    error_responses(&["401", "404", "409", "412"]))}
        });
        if kind.writable_via_api() {
            collection["post"] = json!({"operationId": format!("create_{plural}"), "tags": [plural], "summary": format!("Create one of {plural}"),
                "requestBody": body,
                "responses": merge(json!({"201": ok_obj}), error_responses(&["400", "401", "409", "413", "415"]))});
            item["put"] = json!({"operationId": format!("replace_{plural}"), "tags": [plural], "summary": format!("Replace one of {plural}"),
                "parameters": [if_match], "requestBody": body,
                "responses": merge(json!({"200": ok_obj}), error_responses(&["400", "401", "404", "412", "413", "415"]))});
            item["patch"] = json!({"operationId": format!("patch_{plural}"), "tags": [plural], "summary": format!("Merge-patch one of {plural} (RFC 7396)"),
                "parameters": [if_match],
                "requestBody": {"required": true, "content": {"application/merge-patch+json": {"schema": {"type": "object"}}, "application/json": {"schema": {"type": "object"}}}},
                "responses": merge(json!({"200": ok_obj}), error_responses(&["400", "401", "404", "412", "413", "415"]))});
        }
        paths.insert(format!("/api/v1/{plural}"), collection);
        paths.insert(format!("/api/v1/{plural}/{{key}}"), item);
    }
    paths.insert("/api/v1/auth/token".into(), json!({"post": {
        "operationId": "create_token", "tags": ["auth"], "summary": "Exchange a username and password for a bearer token",
        "security": [{"basic": []}],
        "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {
            "ttl_secs": {"type": "integer", "minimum": 1, "maximum": crate::auth::MAX_TOKEN_TTL.as_secs()}, "description": {"type": "string"}}}}}},
        "responses": merge(json!({"201": {"description": "the token (shown once)", "content": {"application/json": {"schema": {"type": "object",
            "properties": {"token": {"type": "string"}, "id": {"type": "string"}, "user": {"type": "string"}, "expires_at": {"type": "string", "format": "date-time"}}}}}}}),
            error_responses(&["400", "401"]))}}));
    paths.insert("/api/v1/events".into(), json!({"get": {
        "operationId": "events", "tags": ["events"], "summary": "Server-sent events of committed changes",
        "parameters": [{"name": "kind", "in": "query", "schema": {"type": "string"}, "description": "comma-separated kinds"},
                       {"name": "key", "in": "query", "schema": {"type": "string"}}],
        "responses": merge(json!({"200": {"description": "`change` events {kind, action, key, revision, object}; `lagged` when events were missed",
            "content": {"text/event-stream": {"schema": {"type": "string"}}}}}), error_responses(&["400", "401"]))}}));
    add_schema(&mut schemas, "BootEvent", schemars::schema_for!(plinth_model::BootEvent).to_value());
    paths.insert("/api/v1/boot-events".into(), json!({"get": {
        "operationId": "boot_events", "tags": ["events"], "summary": "DHCP, TFTP and HTTP boot requests, oldest first",
        "parameters": [{"name": "mac", "in": "query", "schema": {"type": "string"}, "description": "only this machine's"},
                       {"name": "after", "in": "query", "schema": {"type": "integer"}, "description": "`next` of the previous page"},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": plinth_store::MAX_PAGE}}],
        "responses": merge(json!({"200": {"description": "a page of boot events", "content": {"application/json": {"schema": {"type": "object",
            "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/BootEvent"}}, "next": {"type": ["integer", "null"]}}}}}}}),
            error_responses(&["400", "401"]))}}));
    add_schema(&mut schemas, "AuditEntry", schemars::schema_for!(plinth_model::AuditEntry).to_value());
    paths.insert("/api/v1/audit".into(), json!({"get": {
        "operationId": "audit", "tags": ["events"], "summary": "The audit log: every change through the API (who, when, before and after) and every secure-value read, oldest first",
        "parameters": [{"name": "kind", "in": "query", "schema": {"type": "string"}, "description": "only this kind's (plural)"},
                       {"name": "key", "in": "query", "schema": {"type": "string"}, "description": "only this object's"},
                       {"name": "actor", "in": "query", "schema": {"type": "string"}, "description": "`user:NAME`, `machine:ID`, `address:IP`"},
                       {"name": "after", "in": "query", "schema": {"type": "integer"}, "description": "`next` of the previous page"},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": plinth_store::MAX_PAGE}}],
        "responses": merge(json!({"200": {"description": "a page of audit entries", "content": {"application/json": {"schema": {"type": "object",
            "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}}, "next": {"type": ["integer", "null"]}}}}}}}),
            error_responses(&["400", "401", "403"]))}}));
    let bundle = json!({"description": "a pack bundle (`plinth content bundle DIR`): {format, manifest, objects}", "required": true,
        "content": {"application/json": {"schema": {"type": "object"}}}});
    let plan_resp = |what: &str| {
        json!({"200": {"description": what, "content": {"application/json": {"schema": {"type": "object",
        "description": "{pack, from, to, objects, errors, warnings, schema_violations, machines: [{id, name, files: [{file, diff}], errors, workflow_affected}], machines_checked}"}}}}})
    };
    let force = json!([{"name": "force", "in": "query", "schema": {"type": "boolean"}, "description": "apply even if the plan has errors"}]);
    let name_param = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    paths.insert("/api/v1/contents/plan".into(), json!({"post": {"operationId": "plan_content", "tags": ["contents"],
        "summary": "What installing or upgrading to a pack would change: objects, overrides, schema violations, and per-machine diffs of every rendered file",
        "requestBody": bundle, "responses": merge(plan_resp("the plan"), error_responses(&["400", "401", "403", "413"]))}}));
    paths.insert("/api/v1/contents/install".into(), json!({"post": {"operationId": "install_content", "tags": ["contents"],
        "summary": "Install or upgrade a pack in one transaction; refused (409) when the plan has errors, unless forced",
        "parameters": force, "requestBody": bundle,
        "responses": merge(plan_resp("the plan, applied"), error_responses(&["400", "401", "403", "409", "413"]))}}));
    paths.insert(
        "/api/v1/contents/{name}/rollback".into(),
        json!({"post": {"operationId": "rollback_content", "tags": ["contents"],
        "summary": "Restore the version the installed pack replaced, in one transaction",
        "parameters": [name_param.clone(), force[0].clone()],
        "responses": merge(plan_resp("the plan, applied"), error_responses(&["401", "403", "404", "409"]))}}),
    );
    paths.insert("/api/v1/contents/{name}/promote".into(), json!({"post": {"operationId": "promote_content", "tags": ["contents"],
        "summary": "After a canary upgrade: every machine kept on the earlier version takes the installed one, in one transaction",
        "parameters": [name_param.clone(), force[0].clone()],
        "responses": merge(plan_resp("the plan, applied"), error_responses(&["401", "403", "404", "409"]))}}));
    let canary = json!({"name": "canary", "in": "query", "schema": {"type": "string"},
        "description": "comma-separated machine ids or names that take the new version; the others stay on the installed one until promote"});
    for p in ["/api/v1/contents/plan", "/api/v1/contents/install"] {
        if let Some(op) = paths.get_mut(p).and_then(|v| v.get_mut("post")) {
            let mut params = op.get("parameters").cloned().unwrap_or(json!([]));
            if let Value::Array(a) = &mut params {
                a.push(canary.clone());
            }
            op["parameters"] = params;
        }
    }
    paths.insert("/api/v1/contents/export".into(), json!({"get": {"operationId": "export_site", "tags": ["contents"],
        "summary": "The site's own layer (every object no pack installed, overrides included, built-in content left out) as a pack bundle",
        "parameters": [{"name": "name", "in": "query", "required": true, "schema": {"type": "string"}},
                       {"name": "version", "in": "query", "required": true, "schema": {"type": "string"}}],
        "responses": merge(json!({"200": {"description": "the bundle", "content": {"application/json": {"schema": {"type": "object"}}}}}), error_responses(&["400", "401", "403"]))}}));
    let item = format!("/api/v1/{}/{{key}}", Kind::Content.plural());
    paths.remove(&item);
    paths.insert("/api/v1/contents/{name}".into(), json!({
        "get": {"operationId": "show_content", "tags": ["contents"], "summary": "An installed pack, with its bundle", "parameters": [name_param.clone()],
            "responses": merge(json!({"200": {"description": "the pack", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Content"}}}}}), error_responses(&["401", "403", "404"]))},
        "delete": {"operationId": "remove_content", "tags": ["contents"], "summary": "Remove the pack and its objects (not the site's overrides), in one transaction; refused while they are in use",
            "parameters": [name_param, force[0].clone()],
            "responses": merge(plan_resp("the plan, applied"), error_responses(&["401", "403", "404", "409"]))}}));
    paths.insert("/api/v1/machines/{id}/params".into(), json!({"get": {
        "operationId": "machine_params", "tags": ["machines"], "summary": "A machine's resolved params; with explain, where each value came from",
        "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                       {"name": "explain", "in": "query", "schema": {"type": "boolean", "default": false}}],
        "responses": merge(json!({"200": {"description": "param name to value (or, with explain, {value, source, shadows, secure}); secure values redacted",
            "content": {"application/json": {"schema": {"type": "object"}}}}}), error_responses(&["400", "401", "404", "409"]))}}));
    paths.insert("/api/v1/render".into(), json!({"post": {
        "operationId": "render", "tags": ["machines"], "summary": "Render a template for a machine, without side effects",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["machine"], "properties": {
            "machine": {"type": "string"}, "template": {"type": "string"}, "contents": {"type": "string"},
            "http": {"type": "string", "description": "boot HTTP base URL for provisioner.http"},
            "bootenv_file": {"type": "string", "description": "a file of the machine's bootenv, by path or name"}}}}}},
        "responses": merge(json!({"200": {"description": "the rendered text", "content": {"application/json": {"schema": {"type": "object",
            "properties": {"output": {"type": "string"}}}}}}}), error_responses(&["400", "401", "404", "409", "413", "415"]))}}));
    let id_param = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let obj = json!({"application/json": {"schema": {"type": "object"}}});
    let agent_route = |op: &str, summary: &str, req: Option<Value>, ok: &str, errors: &[&str]| {
        let mut o = json!({"operationId": op, "tags": ["workflows"], "summary": summary, "parameters": [id_param.clone()],
            "responses": merge(json!({"200": {"description": ok, "content": obj.clone()}}), error_responses(errors))});
        if let Some(schema) = req {
            o["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": schema}}});
        }
        o
    };
    paths.insert("/api/v1/machines/{id}/workflow".into(), json!({"post": agent_route("assign_workflow",
        "Start a workflow on a machine from its first stage", Some(json!({"type": "object", "required": ["workflow"], "properties": {"workflow": {"type": "string"}}})),
        "the machine", &["400", "401", "404", "409"])}));
    paths.insert(
        "/api/v1/machines/{id}/resume".into(),
        json!({"post": agent_route("resume_workflow",
        "Go on after a failed task (it runs again) or a pause", None, "the machine", &["400", "401", "404", "409"])}),
    );
    paths.insert("/api/v1/machines/{id}/next".into(), json!({"post": agent_route("next_job",
        "The agent's next step: run a job, reboot, or wait (long poll up to wait_secs, at most 60)",
        Some(json!({"type": "object", "properties": {"boot_id": {"type": "string"}, "wait_secs": {"type": "integer", "minimum": 0, "maximum": 60}}})),
        "{action: run, job} | {action: reboot} | {action: wait, state}", &["400", "401", "403", "404", "409"])}));
    paths.insert("/api/v1/machines/{id}/inventory".into(), json!({"post": agent_route("machine_inventory",
        "The agent reports the machine's hardware (stored as `inventory`)", Some(json!({"type": "object"})), "the machine", &["400", "401", "403", "404", "409"])}));
    let mut timeline = json!({"get": agent_route("machine_timeline",
        "Everything recorded about a machine, oldest first: DHCP, TFTP, HTTP (renders), agent check-ins, jobs, stages and bootenv changes",
        None, "{items: [BootEvent]}", &["401", "404"])});
    timeline["get"]["responses"]["200"]["content"]["application/json"]["schema"] = json!({"type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/BootEvent"}}}});
    paths.insert("/api/v1/machines/{id}/timeline".into(), timeline);
    let mut whoami = json!({"post": agent_route("whoami",
        "A machine says who it is (MACs, system UUID, serial; never its IP) and gets its Machine (matched or created) and a machine token",
        Some(json!({"type": "object", "properties": {"name": {"type": "string"}, "macs": {"type": "array", "items": {"type": "string"}},
            "system_uuid": {"type": "string"}, "serial": {"type": "string"}, "inventory": {"type": "object"}}})),
        "{machine, created, score, token, expires_at}", &["400", "401", "403", "409"])});
    whoami["post"]["parameters"] = json!([]);
    paths.insert("/api/v1/machines/whoami".into(), whoami);
    let mut join = json!({"post": agent_route("create_join_token",
        "A token that can only register machines: `uses` times (default 1), for `ttl_secs` (default 3600); machines it creates get `profiles` and start `workflow`",
        Some(json!({"type": "object", "properties": {"ttl_secs": {"type": "integer"}, "uses": {"type": "integer"}, "description": {"type": "string"},
            "workflow": {"type": "string"}, "profiles": {"type": "array", "items": {"type": "string"}}}})),
        "{token, id, expires_at, uses}", &["400", "401", "403"])});
    join["post"]["parameters"] = json!([]);
    paths.insert("/api/v1/join-tokens".into(), join);
    paths.insert("/api/v1/machines/{id}/session".into(), json!({"post": agent_route("machine_session",
        "The machine's own agent trades its boot credential for a session (once; a second trade is refused and recorded), or renews its session (never past its absolute end)",
        None, "{token, expires_at, session_ends_at}", &["401", "403", "404"])}));
    paths.insert(
        "/api/v1/machines/{id}/accept".into(),
        json!({"post": agent_route("accept_machine",
        "Trust a machine discovery registered with the site's secrets (claim: secure update)",
        None, "the machine", &["401", "403", "404", "409"])}),
    );
    let power_route = |op: &str, summary: &str, req: Option<Value>, ok: &str| {
        let mut o = agent_route(op, summary, req, ok, &["400", "401", "404", "409", "502"]);
        o["tags"] = json!(["power"]);
        if let Some(body) = o.get_mut("requestBody") {
            body["required"] = json!(true);
        }
        o
    };
    let power_answer = "{machine, name, action, state (on|off|unknown), checked_at, error}";
    paths.insert("/api/v1/machines/{id}/power".into(), json!({
        "get": power_route("power_status", "The machine's power state, read from its BMC now (claim: power read)", None, power_answer),
        "post": power_route("power_action",
            "A power action through the machine's BMC (claim: power update); audited, on the timeline; 502 names the BMC's trouble (unreachable, bad credentials, unsupported, TLS, unexpected answer)",
            Some(json!({"type": "object", "required": ["action"], "properties": {"action": {"type": "string", "enum": ["on", "off", "cycle", "reset", "soft-off"]}}})),
            power_answer)}));
    paths.insert("/api/v1/machines/{id}/boot-once".into(), json!({"post": power_route("boot_once",
        "Boot a device once, at the machine's next boot (IPMI chassis bootdev, Redfish BootSourceOverride; claim: power update)",
        Some(json!({"type": "object", "required": ["device"], "properties": {"device": {"type": "string", "enum": ["pxe", "disk", "cd"]},
            "uefi": {"type": "boolean", "description": "UEFI boot; by default what Plinth saw the machine boot with"}}})),
        "{machine, name, device}")}));
    paths.insert("/api/v1/machines/{id}/rebuild".into(), json!({"post": power_route("rebuild",
        "Reprovision with nobody at the machine: assign the workflow (it waits for the next boot), boot once from the network, power-cycle (claims: power update and machines update)",
        Some(json!({"type": "object", "properties": {"workflow": {"type": "string", "description": "by default the machine's own"}}})),
        "{machine, name, action, state, workflow, checked_at, error}")}));
    paths.insert("/api/v1/machines/{id}/boot-media".into(), json!({"post": power_route("boot_media",
        "Boot the machine from the discovery image over Redfish virtual media (no DHCP boot options needed): an image of its own carrying a single-use, short-lived boot credential is inserted, booted once and the machine powered on or cycled; with eject, the media is ejected (claim: power update)",
        Some(json!({"type": "object", "properties": {"eject": {"type": "boolean"}}})),
        "{machine, name, action, state, image, credential_expires_at} | {machine, name, ejected}")}));
    let mut enroll = json!({"post": power_route("enroll",
        "Create a machine, or give the BMC to the machine it matches, from what a Redfish BMC says of its system (UUID, serial, NIC MACs), before it ever boots (claim: machines create)",
        Some(json!({"type": "object", "required": ["bmc"], "properties": {"bmc": {"$ref": "#/components/schemas/Bmc"},
            "name": {"type": "string"}, "profiles": {"type": "array", "items": {"type": "string"}}, "workflow": {"type": "string"}}})),
        "{machine, created, score}")});
    enroll["post"]["parameters"] = json!([]);
    enroll["post"]["responses"]["201"] = json!({"description": "a new machine", "content": obj.clone()});
    paths.insert("/api/v1/machines/enroll".into(), enroll);
    paths.insert("/api/v1/conflicts/{id}/accept".into(), json!({"post": agent_route("accept_conflict",
        "A held discovery registration is the machine it matched: its next registration gets that machine's session (claim: secure update)",
        None, "the conflict", &["401", "403", "404", "409"])}));
    paths.insert(
        "/api/v1/conflicts/{id}/reject".into(),
        json!({"post": agent_route("reject_conflict",
        "A held discovery registration is not the machine it matched: it is refused from now on",
        None, "the conflict", &["401", "403", "404", "409"])}),
    );
    paths.insert("/api/v1/jobs/{id}/start".into(), json!({"post": agent_route("start_job", "The agent started the job", None, "the job", &["401", "403", "404", "409"])}));
    paths.insert("/api/v1/jobs/{id}/finish".into(), json!({"post": agent_route("finish_job",
        "How the job ended: exit code (0 ok, 64 ok+reboot, 65 ok+poweroff, 66 ok+pause, else failed), reason, params to set on the machine",
        Some(json!({"type": "object", "required": ["exit_code"], "properties": {"exit_code": {"type": "integer"}, "reason": {"type": "string"}, "params": {"type": "object"}}})),
        "the job", &["400", "401", "403", "404", "409"])}));
    let mut log = json!({"get": agent_route("job_log", "The job's output so far (text/plain)", None, "the log", &["401", "403", "404"]),
        "post": agent_route("append_job_log", "Chunk `seq` of the job's output; a resent chunk is stored once",
            Some(json!({"type": "object", "required": ["seq", "text"], "properties": {"seq": {"type": "integer", "minimum": 0}, "text": {"type": "string"}}})),
            "{stored}", &["400", "401", "403", "404"])});
    log["get"]["responses"]["200"] =
        json!({"description": "the log", "content": {"text/plain": {"schema": {"type": "string"}}}});
    paths.insert("/api/v1/jobs/{id}/log".into(), log);
    paths.insert("/api/v1/jobs/{id}/progress".into(), json!({"post": agent_route("job_progress",
        "A running job's progress, put on its machine's timeline (the agent forwards a task's `plinth-progress` lines, at most one every 5 s)",
        Some(json!({"type": "object", "required": ["done"], "properties": {"done": {"type": "integer", "minimum": 0},
            "total": {"type": "integer", "minimum": 0}, "rate": {"type": "integer", "minimum": 0},
            "what": {"type": "string", "maxLength": 200}}})),
        "{recorded}", &["400", "401", "403", "404", "409"])}));
    paths.insert("/api/v1/machines/{id}/metadata-token".into(), json!({"post": agent_route("metadata_token",
        "A new metadata token for the machine (its earlier ones revoked): it reads only the machine's metadata on boot HTTP (/t/<token>/meta-data, user-data, vendor-data, network-config, latest/...) until --metadata-token-ttl; with the NoCloud seed URL (claim: secure read)",
        None, "{machine, token, expires_at, seed_url, smbios, kernel_arg}", &["401", "403", "404", "409"])}));
    paths.insert("/api/v1/jobs/{id}/files".into(), json!({"get": agent_route("job_files",
        "The job's task rendered for its machine: [{name, path, contents}]", None, "the files", &["401", "403", "404", "409"])}));
    paths.insert("/api/v1/info".into(), json!({"get": {"operationId": "info", "tags": ["meta"], "summary": "Server name and version",
        "responses": merge(json!({"200": {"description": "version", "content": {"application/json": {"schema": {"type": "object"}}}}}), error_responses(&["401"]))}}));
    paths.insert("/api/v1/openapi.json".into(), json!({"get": {"operationId": "openapi", "tags": ["meta"], "summary": "This document",
        "responses": merge(json!({"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}), error_responses(&["401"]))}}));
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["error", "detail"], "properties": {
        "error": {"type": "string", "description": "machine-readable code"},
        "detail": {"type": "string", "description": "what was wrong and what to do"},
        "field": {"type": "string", "description": "the offending field, when one is to blame"}}}),
    );
    // Every route but the login checks claims, so every one may answer 403.
    for (path, ops) in paths.iter_mut() {
        if path == "/api/v1/auth/token" {
            continue;
        }
        for op in ops.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
            if let Some(Value::Object(r)) = op.get_mut("responses") {
                r.entry("403").or_insert_with(|| json!({"$ref": "#/components/responses/403"}));
            }
        }
    }
    let responses: Map<String, Value> = [
        ("400", "invalid request: bad JSON, wrong types, unknown fields, failed validation"),
        ("401", "missing, invalid or expired credentials"),
        ("403", "the credentials do not allow this: no role of the user (or the token's restriction) claims it, or a machine token outside its machine"),
        ("404", "no such object or kind"),
        ("409", "the key is taken, or the object cannot be deleted"),
        ("412", "If-Match names a stale revision"),
        ("413", "body too large"),
        ("415", "body is not JSON"),
        ("502", "the machine's BMC failed: unreachable, bad credentials, unsupported, TLS, or an unexpected answer (in `detail`)"),
    ]
    .into_iter()
    .map(|(c, d)| (c.to_owned(), json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})))
    .collect();
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Plinth API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Provisioning for bare metal and cloud machines. Every route needs a bearer token except POST /api/v1/auth/token."},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"}
            }
        }
    })
}

fn merge(mut a: Value, b: Map<String, Value>) -> Value {
    if let Value::Object(m) = &mut a {
        m.extend(b);
    }
    a
}

/// `GET /api/v1/openapi.json`.
pub async fn document(State(_): State<AppState>) -> Json<Value> {
    Json(build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_paths_and_every_ref_resolves() {
        let doc = build();
        for k in Kind::ALL {
            assert!(doc["paths"][format!("/api/v1/{}", k.plural())]["get"].is_object());
            // Installed packs are keyed by name and change only by their own routes.
            let item = if k == Kind::Content {
                "/api/v1/contents/{name}".to_owned()
            } else {
                format!("/api/v1/{}/{{key}}", k.plural())
            };
            assert!(doc["paths"][item]["delete"].is_object());
        }
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        for r in all {
            let path = r.strip_prefix("#/").expect("local ref");
            let target = path.split('/').fold(&doc, |v, seg| &v[seg]);
            assert!(!target.is_null(), "dangling {r}");
        }
    }
}
