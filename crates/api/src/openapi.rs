//! The OpenAPI 3.1 document, generated from the kind list and each kind's
//! JSON Schema so it cannot drift from what the server accepts.

use crate::AppState;
use axum::Json;
use axum::extract::State;
use plinth_model::Kind;
use serde_json::{Map, Value, json};

/// Rewrites `#/$defs/X` references to `#/components/schemas/X`.
/// A pack version as the content crate reads it: `MAJOR.MINOR.PATCH`.
const VERSION_PATTERN: &str = "^(0|[1-9][0-9]{0,8})\\.(0|[1-9][0-9]{0,8})\\.(0|[1-9][0-9]{0,8})$";

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
    schemas.values_mut().for_each(plinth_model::bound_integers);
    schemas.values_mut().for_each(drop_null_defaults);
}

/// The name of the merge-patch form (RFC 7396) of component `name`: every
/// field optional; one the object may lack also `null` (which removes it);
/// nested objects in their patch form, map values nullable; arrays whole.
/// At the top (`nested` false) no field is required: the stored object
/// supplies them.
fn patch_variant(schemas: &mut Map<String, Value>, name: &str, nested: bool) -> String {
    let patch = format!("{name}Patch");
    if schemas.contains_key(&patch) {
        return patch;
    }
    let Some(mut s) = schemas.get(name).cloned() else { return name.to_owned() };
    if s.get("properties").is_none() {
        return name.to_owned();
    }
    // Placeholder first, so a recursive definition ends.
    schemas.insert(patch.clone(), json!({}));
    patch_object(schemas, &mut s, nested);
    schemas.insert(patch.clone(), s);
    patch
}

fn patch_object(schemas: &mut Map<String, Value>, s: &mut Value, nested: bool) {
    let required: Vec<String> = s
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    if let Value::Object(o) = s {
        if !nested {
            // A patch is any subset of the fields: rules over the whole
            // object (one of `url` or `path`, a stage needs a workflow) are
            // the merged object's, which the server checks.
            for k in ["required", "if", "then", "oneOf", "anyOf"] {
                o.remove(k);
            }
        }
        if let Some(Value::Object(props)) = o.get_mut("properties") {
            for (field, p) in props.iter_mut() {
                let patched = patch_value(schemas, p);
                *p = if required.contains(field) { patched } else { json!({"anyOf": [patched, {"type": "null"}]}) };
            }
        }
    }
}

fn patch_value(schemas: &mut Map<String, Value>, v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(target) = v.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/")) {
        let target = target.to_owned();
        let p = patch_variant(schemas, &target, true);
        v["$ref"] = json!(format!("#/components/schemas/{p}"));
        return v;
    }
    if v.get("properties").is_some() {
        patch_object(schemas, &mut v, true);
        return v;
    }
    if let Value::Object(o) = &mut v {
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(alts)) = o.get_mut(key) {
                let patched: Vec<Value> = alts.iter().map(|a| patch_value(schemas, a)).collect();
                *alts = patched;
            }
        }
        if let Some(ap) = o.get("additionalProperties").filter(|a| a.is_object()).cloned() {
            o.insert("additionalProperties".into(), json!({"anyOf": [patch_value(schemas, &ap), {"type": "null"}]}));
        }
    }
    v
}

/// The JSON Schema of a request body type the handler deserializes, its
/// definitions hoisted into the shared components.
fn req_schema<T: schemars::JsonSchema>(schemas: &mut Map<String, Value>) -> Value {
    let mut v = schemars::schema_for!(T).to_value();
    if let Some(Value::Object(defs)) = v.as_object_mut().and_then(|m| m.remove("$defs")) {
        for (k, mut d) in defs {
            rewrite_refs(&mut d);
            schemas.entry(k).or_insert(d);
        }
    }
    if let Value::Object(m) = &mut v {
        m.remove("$schema");
        m.remove("title");
    }
    rewrite_refs(&mut v);
    drop_null_defaults(&mut v);
    plinth_model::bound_integers(&mut v);
    v
}

/// Removes `"default": null` (an absent optional field), which a schema
/// that does not allow null must not state.
fn drop_null_defaults(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.get("default") == Some(&Value::Null) {
                m.remove("default");
            }
            m.values_mut().for_each(drop_null_defaults);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_null_defaults),
        _ => {}
    }
}

/// Query parameters from the type a handler deserializes its query into.
fn query_params<T: schemars::JsonSchema>(schemas: &mut Map<String, Value>) -> Vec<Value> {
    let s = req_schema::<T>(schemas);
    let required: Vec<&str> =
        s.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let mut out = Vec::new();
    for (name, prop) in s.get("properties").and_then(Value::as_object).into_iter().flatten() {
        let mut schema = prop.clone();
        let description = schema.as_object_mut().and_then(|o| o.remove("description"));
        let mut p =
            json!({"name": name, "in": "query", "required": required.contains(&name.as_str()), "schema": schema});
        if let Some(d) = description {
            p["description"] = d;
        }
        out.push(p);
    }
    out
}

fn set_param_schema(params: &mut [Value], name: &str, schema: Value) {
    if let Some(p) = params.iter_mut().find(|p| p["name"] == name) {
        p["schema"] = schema;
    }
}

/// `If-Match`: the ETag of a previous response (or `*`).
fn if_match_param() -> Value {
    json!({"name": "If-Match", "in": "header", "required": false,
        "schema": {"type": "string", "pattern": "^(\\*|(W/)?\"[0-9]{1,19}\"|[0-9]{1,19})$"},
        "description": "ETag (revision) the write expects, e.g. `\"3\"`, or `*` for any; 412 when stale"})
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
        // Fields only the server writes are never sent.
        for f in kind.server_only_fields() {
            if let Some(p) = schemas.get_mut(&name).and_then(|s| s.get_mut("properties")).and_then(|p| p.get_mut(*f)) {
                p["readOnly"] = json!(true);
            }
        }
        let mut key_schema = schemas[&name]["properties"][kind.key_field()].clone();
        if let Value::Object(o) = &mut key_schema {
            o.remove("description");
            o.remove("default");
        }
        let key_param = json!({"name": "key", "in": "path", "required": true, "schema": key_schema,
            "description": format!("the object's `{}`", kind.key_field())});
        let if_match = if_match_param();
        let ok_obj = json!({"description": "the object; ETag carries its revision",
            "content": {"application/json": {"schema": obj_ref}}});
        let body = json!({"required": true, "content": {"application/json": {"schema": obj_ref}}});
        // A replace may leave the key out (the URL's is used); a merge patch
        // sends any subset of the fields, null removing one (RFC 7396).
        let mut replace_schema = schemas[&name].clone();
        if let Some(Value::Array(req)) = replace_schema.get_mut("required") {
            req.retain(|f| f != kind.key_field());
        }
        let patch_name = patch_variant(&mut schemas, &name, false);
        // The key may be sent (it must be the URL's) but never removed.
        if let Some(p) =
            schemas.get_mut(&patch_name).and_then(|s| s.get_mut("properties")).and_then(|p| p.get_mut(kind.key_field()))
        {
            *p = key_schema.clone();
        }
        let patch_schema = json!({"$ref": format!("#/components/schemas/{patch_name}")});
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
                    ],
                "responses": list_resp}
        });
        // Every scalar field is an equality filter, checked against the
        // field's own schema by the server (the same list).
        if let Some(Value::Array(params)) = collection["get"].get_mut("parameters") {
            for (field, mut schema) in plinth_model::filter_fields(kind) {
                rewrite_refs(&mut schema);
                let description = schema.as_object_mut().and_then(|o| o.remove("description"));
                let what = description.as_ref().and_then(Value::as_str).unwrap_or("");
                params.push(json!({"name": field, "in": "query", "required": false, "schema": schema,
                    "description": format!("only objects whose `{field}` is (or, for a list, holds) this value. {what}")}));
            }
        }
        collection["get"]["description"] = json!(
            "Filters are equality filters on the fields listed as query parameters (an array field matches an element); a nested field of an object field filters by its dotted name, e.g. `?os.family=debian` or `?meta.rack=r1`. Several filters must all hold."
        );
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
                "parameters": [if_match], "requestBody": {"required": true, "content": {"application/json": {"schema": replace_schema}}},
                "responses": merge(json!({"200": ok_obj}), error_responses(&["400", "401", "404", "412", "413", "415"]))});
            item["patch"] = json!({"operationId": format!("patch_{plural}"), "tags": [plural], "summary": format!("Merge-patch one of {plural} (RFC 7396)"),
                "parameters": [if_match],
                "requestBody": {"required": true, "content": {"application/merge-patch+json": {"schema": patch_schema.clone()}, "application/json": {"schema": patch_schema}}},
                "responses": merge(json!({"200": ok_obj}), error_responses(&["400", "401", "404", "412", "413", "415"]))});
        }
        paths.insert(format!("/api/v1/{plural}"), collection);
        paths.insert(format!("/api/v1/{plural}/{{key}}"), item);
    }
    // A bundle's format and manifest, as the content crate checks them.
    // A pack object is one of the kinds a pack holds, its body that
    // kind's object.
    if let Some(o) = schemas.get_mut("BundleObject") {
        let kinds: Vec<Value> = plinth_content::pack::PACK_KINDS
            .iter()
            .map(|k| json!({"properties": {"kind": {"const": k.plural()}, "body": {"$ref": format!("#/components/schemas/{}", type_name(*k))}}}))
            .collect();
        o["properties"]["kind"] =
            json!({"enum": plinth_content::pack::PACK_KINDS.iter().map(|k| k.plural()).collect::<Vec<_>>()});
        o["oneOf"] = Value::Array(kinds);
        // The key may be left out: it is the body's.
        if let Some(Value::Array(r)) = o.get_mut("required") {
            r.retain(|f| f != "key");
        }
        o["properties"]["key"] = json!({"type": ["string", "null"]});
    }
    if let Some(b) = schemas.get_mut("Bundle") {
        b["properties"]["format"] = json!({"const": plinth_content::pack::FORMAT});
        b["properties"]["manifest"] = json!({"type": "object", "required": ["name", "version"], "additionalProperties": false,
            "properties": {
                "name": {"$ref": "#/components/schemas/Name"},
                "version": {"type": "string", "pattern": VERSION_PATTERN},
                "description": {"type": "string"}, "source": {"type": "string"},
                "requires": {"type": "array", "items": {"type": "object", "required": ["name", "version"], "additionalProperties": false,
                    "properties": {"name": {"$ref": "#/components/schemas/Name"},
                        "version": {"type": "string", "pattern": "^ *(>=|<=|>|<|=|\\^|~)? *(0|[1-9][0-9]{0,8})(\\.(0|[1-9][0-9]{0,8})){0,2} *(, *(>=|<=|>|<|=|\\^|~)? *(0|[1-9][0-9]{0,8})(\\.(0|[1-9][0-9]{0,8})){0,2} *)*$"}}}},
                "plinth": {"type": ["string", "null"]},
                "overrides": {"type": "array", "items": {"type": "string"}}}});
    }
    paths.insert("/api/v1/auth/token".into(), json!({"post": {
        "operationId": "create_token", "tags": ["auth"], "summary": "Exchange a username and password for a bearer token",
        "security": [{"basic": []}],
        "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {
            "ttl_secs": {"type": "integer", "minimum": 1, "maximum": crate::auth::MAX_TOKEN_TTL.as_secs()}, "description": {"type": "string"}}}}}},
        "responses": merge(json!({"201": {"description": "the token (shown once)", "content": {"application/json": {"schema": {"type": "object",
            "properties": {"token": {"type": "string"}, "id": {"type": "string"}, "user": {"type": "string"}, "expires_at": {"type": "string", "format": "date-time"}}}}}}}),
            error_responses(&["400", "401"]))}}));
    // A kind parameter names kinds by their plurals.
    let plurals: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
    let one = format!("({})", plurals.join("|"));
    let mut event_params = query_params::<crate::events::EventQuery>(&mut schemas);
    set_param_schema(&mut event_params, "kind", json!({"type": "string", "pattern": format!("^({one}(,{one})*)?$")}));
    let mut audit_params = query_params::<crate::events::AuditParams>(&mut schemas);
    set_param_schema(&mut audit_params, "kind", json!({"type": "string", "enum": plurals}));
    paths.insert("/api/v1/events".into(), json!({"get": {
        "operationId": "events", "tags": ["events"], "summary": "Server-sent events of committed changes",
        "parameters": event_params,
        "responses": merge(json!({"200": {"description": "server-sent events: `ready` once subscribed (no later change is missed), then `change` for every committed change the caller may read, and `lagged` when a slow client missed some. Each event's `data` is JSON",
            "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/ServerSentEvent"}}}}}), error_responses(&["400", "401"]))}}));
    schemas.insert("ServerSentEvent".into(), json!({"type": "object", "required": ["event", "data"],
        "description": "One event of the stream (OpenAPI 3.1: the schema of each event)",
        "oneOf": [
            {"properties": {"event": {"const": "ready"}, "data": {"type": "string", "contentMediaType": "application/json",
                "contentSchema": {"type": "object", "required": ["subscribed"], "properties": {"subscribed": {"const": true}}}}}},
            {"properties": {"event": {"const": "change"}, "data": {"type": "string", "contentMediaType": "application/json",
                "contentSchema": {"$ref": "#/components/schemas/ChangeEvent"}}}},
            {"properties": {"event": {"const": "lagged"}, "data": {"type": "string", "contentMediaType": "application/json",
                "contentSchema": {"type": "object", "required": ["missed"], "properties": {"missed": {"type": "integer", "minimum": 1}}}}}}],
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}));
    schemas.insert("ChangeEvent".into(), json!({"type": "object", "required": ["kind", "action", "key", "revision", "object"],
        "properties": {"kind": {"type": "string", "enum": plurals}, "action": {"type": "string", "enum": ["created", "updated", "deleted"]},
            "key": {"type": "string"}, "revision": {"type": "integer", "minimum": 0},
            "object": {"type": "object", "description": "the object after the change (before it, for a delete), as `GET` shows it"}}}));
    add_schema(&mut schemas, "BootEvent", schemars::schema_for!(plinth_model::BootEvent).to_value());
    paths.insert("/api/v1/boot-events".into(), json!({"get": {
        "operationId": "boot_events", "tags": ["events"], "summary": "DHCP, TFTP and HTTP boot requests, oldest first",
        "parameters": query_params::<crate::events::BootEventParams>(&mut schemas),
        "responses": merge(json!({"200": {"description": "a page of boot events", "content": {"application/json": {"schema": {"type": "object",
            "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/BootEvent"}}, "next": {"type": ["integer", "null"]}}}}}}}),
            error_responses(&["400", "401"]))}}));
    add_schema(&mut schemas, "AuditEntry", schemars::schema_for!(plinth_model::AuditEntry).to_value());
    paths.insert("/api/v1/audit".into(), json!({"get": {
        "operationId": "audit", "tags": ["events"], "summary": "The audit log: every change through the API (who, when, before and after) and every secure-value read, oldest first",
        "parameters": audit_params,
        "responses": merge(json!({"200": {"description": "a page of audit entries", "content": {"application/json": {"schema": {"type": "object",
            "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}}, "next": {"type": ["integer", "null"]}}}}}}}),
            error_responses(&["400", "401", "403"]))}}));
    let bundle = json!({"description": "a pack bundle (`plinth content bundle DIR`): {format, manifest, objects}", "required": true,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Bundle"}}}});
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
        "parameters": [{"name": "name", "in": "query", "required": true, "schema": {"$ref": "#/components/schemas/Name"}},
                       {"name": "version", "in": "query", "required": true, "schema": {"type": "string", "pattern": VERSION_PATTERN}}],
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
                       query_params::<crate::params::ParamsQuery>(&mut schemas)[0]],
        "responses": merge(json!({"200": {"description": "param name to value (or, with explain, {value, source, shadows, secure}); secure values redacted",
            "content": {"application/json": {"schema": {"type": "object"}}}}}), error_responses(&["400", "401", "404", "409"]))}}));
    // Exactly one of the three sources, as the handler insists.
    let mut render_req = req_schema::<crate::params::RenderRequest>(&mut schemas);
    render_req["oneOf"] =
        json!([{"required": ["template"]}, {"required": ["contents"]}, {"required": ["bootenv_file"]}]);
    paths.insert("/api/v1/render".into(), json!({"post": {
        "operationId": "render", "tags": ["machines"], "summary": "Render a template for a machine, without side effects",
        "requestBody": {"required": true, "content": {"application/json": {"schema": render_req}}},
        "responses": merge(json!({"200": {"description": "the rendered text", "content": {"application/json": {"schema": {"type": "object",
            "properties": {"output": {"type": "string"}}}}}}}), error_responses(&["400", "401", "404", "409", "413", "415"]))}}));
    let id_param = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let assign_req = req_schema::<crate::agent::AssignRequest>(&mut schemas);
    let next_req = req_schema::<crate::agent::NextRequest>(&mut schemas);
    let whoami_req = req_schema::<crate::agent::WhoamiRequest>(&mut schemas);
    let join_req = req_schema::<crate::agent::JoinTokenRequest>(&mut schemas);
    let finish_req = req_schema::<crate::agent::FinishRequest>(&mut schemas);
    let log_req = req_schema::<crate::agent::LogRequest>(&mut schemas);
    let progress_req = req_schema::<crate::agent::ProgressRequest>(&mut schemas);
    // The handlers answer a missing `action` or `device` with a 400 naming it.
    let mut power_req = req_schema::<crate::power::PowerBody>(&mut schemas);
    power_req["required"] = json!(["action"]);
    let mut boot_once_req = req_schema::<crate::power::BootOnceBody>(&mut schemas);
    boot_once_req["required"] = json!(["device"]);
    let rebuild_req = req_schema::<crate::power::RebuildBody>(&mut schemas);
    let media_req = req_schema::<crate::power::MediaBody>(&mut schemas);
    let enroll_req = req_schema::<crate::power::EnrollBody>(&mut schemas);
    let obj = json!({"application/json": {"schema": {"type": "object"}}});
    let agent_route = |op: &str, summary: &str, req: Option<Value>, ok: &str, errors: &[&str]| {
        let mut o = json!({"operationId": op, "tags": ["workflows"], "summary": summary, "parameters": [id_param.clone()],
            "responses": merge(json!({"200": {"description": ok, "content": obj.clone()}}), error_responses(errors))});
        if let Some(schema) = req {
            // A body with required fields must be sent; others may be left out.
            let required = schema.get("required").and_then(Value::as_array).is_some_and(|r| !r.is_empty())
                || schema.get("anyOf").is_some();
            o["requestBody"] = json!({"required": required, "content": {"application/json": {"schema": schema}}});
        }
        o
    };
    paths.insert(
        "/api/v1/machines/{id}/workflow".into(),
        json!({"post": agent_route("assign_workflow",
        "Start a workflow on a machine from its first stage", Some(assign_req),
        "the machine", &["400", "401", "404", "409"])}),
    );
    paths.insert(
        "/api/v1/machines/{id}/resume".into(),
        json!({"post": agent_route("resume_workflow",
        "Go on after a failed task (it runs again) or a pause", None, "the machine", &["400", "401", "404", "409"])}),
    );
    paths.insert(
        "/api/v1/machines/{id}/next".into(),
        json!({"post": agent_route("next_job",
        "The agent's next step: run a job, reboot, or wait (long poll up to wait_secs, at most 60)",
        Some(next_req),
        "{action: run, job} | {action: reboot} | {action: wait, state}", &["400", "401", "403", "404", "409"])}),
    );
    paths.insert("/api/v1/machines/{id}/inventory".into(), json!({"post": agent_route("machine_inventory",
        "The agent reports the machine's hardware (stored as `inventory`)", Some(json!({"type": "object"})), "the machine", &["400", "401", "403", "404", "409"])}));
    paths["/api/v1/machines/{id}/inventory"]["post"]["requestBody"]["required"] = json!(true);
    let mut timeline = json!({"get": agent_route("machine_timeline",
        "Everything recorded about a machine, oldest first: DHCP, TFTP, HTTP (renders), agent check-ins, jobs, stages and bootenv changes",
        None, "{items: [BootEvent]}", &["401", "404"])});
    timeline["get"]["responses"]["200"]["content"]["application/json"]["schema"] = json!({"type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/BootEvent"}}}});
    paths.insert("/api/v1/machines/{id}/timeline".into(), timeline);
    let mut whoami = json!({"post": agent_route("whoami",
        "A machine says who it is (MACs, system UUID, serial; never its IP) and gets its Machine (matched or created) and a machine token",
        Some(whoami_req),
        "{machine, created, score, token, expires_at}", &["400", "401", "403", "409"])});
    whoami["post"]["parameters"] = json!([]);
    paths.insert("/api/v1/machines/whoami".into(), whoami);
    let mut join = json!({"post": agent_route("create_join_token",
        "A token that can only register machines: `uses` times (default 1), for `ttl_secs` (default 3600); machines it creates get `profiles` and start `workflow`",
        Some(join_req),
        "{token, id, expires_at, uses}", &["400", "401", "403"])});
    join["post"]["parameters"] = json!([]);
    let ok = join["post"]["responses"]["200"].take();
    join["post"]["responses"]["201"] = ok;
    if let Some(r) = join["post"]["responses"].as_object_mut() {
        r.remove("200");
    }
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
            Some(power_req),
            power_answer)}));
    paths.insert("/api/v1/machines/{id}/boot-once".into(), json!({"post": power_route("boot_once",
        "Boot a device once, at the machine's next boot (IPMI chassis bootdev, Redfish BootSourceOverride; claim: power update)",
        Some(boot_once_req),
        "{machine, name, device}")}));
    paths.insert("/api/v1/machines/{id}/rebuild".into(), json!({"post": power_route("rebuild",
        "Reprovision with nobody at the machine: assign the workflow (it waits for the next boot), boot once from the network, power-cycle (claims: power update and machines update)",
        Some(rebuild_req),
        "{machine, name, action, state, workflow, checked_at, error}")}));
    paths.insert("/api/v1/machines/{id}/boot-media".into(), json!({"post": power_route("boot_media",
        "Boot the machine from the discovery image over Redfish virtual media (no DHCP boot options needed): an image of its own carrying a single-use, short-lived boot credential is inserted, booted once and the machine powered on or cycled; with eject, the media is ejected (claim: power update)",
        Some(media_req),
        "{machine, name, action, state, image, credential_expires_at} | {machine, name, ejected}")}));
    let mut enroll = json!({"post": power_route("enroll",
        "Create a machine, or give the BMC to the machine it matches, from what a Redfish BMC says of its system (UUID, serial, NIC MACs), before it ever boots (claim: machines create)",
        Some(enroll_req),
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
        Some(finish_req),
        "the job", &["400", "401", "403", "404", "409"])}));
    let mut log = json!({"get": agent_route("job_log", "The job's output so far (text/plain)", None, "the log", &["401", "403", "404"]),
        "post": agent_route("append_job_log", "Chunk `seq` of the job's output; a resent chunk is stored once",
            Some(log_req),
            "{stored}", &["400", "401", "403", "404"])});
    log["get"]["responses"]["200"] =
        json!({"description": "the log", "content": {"text/plain": {"schema": {"type": "string"}}}});
    paths.insert("/api/v1/jobs/{id}/log".into(), log);
    paths.insert("/api/v1/jobs/{id}/progress".into(), json!({"post": agent_route("job_progress",
        "A running job's progress, put on its machine's timeline (the agent forwards a task's `plinth-progress` lines, at most one every 5 s)",
        Some(progress_req),
        "{recorded}", &["400", "401", "403", "404", "409"])}));
    paths.insert("/api/v1/machines/{id}/metadata-token".into(), json!({"post": agent_route("metadata_token",
        "A new metadata token for the machine (its earlier ones revoked): it reads only the machine's metadata on boot HTTP (/t/<token>/meta-data, user-data, vendor-data, network-config, latest/...) until --metadata-token-ttl; with the NoCloud seed URL (claim: secure read)",
        None, "{machine, token, expires_at, seed_url, smbios, kernel_arg}", &["401", "403", "404", "409"])}));
    paths.insert("/api/v1/jobs/{id}/files".into(), json!({"get": agent_route("job_files",
        "The job's task rendered for its machine: [{name, path, contents}]", None, "the files", &["401", "403", "404", "409"])}));
    paths.insert("/api/v1/info".into(), json!({"get": {"operationId": "info", "tags": ["meta"], "summary": "Server name and version",
        "responses": merge(json!({"200": {"description": "version", "content": {"application/json": {"schema": {"type": "object"}}}}}), error_responses(&["401"]))}}));
    // Probes: no token (`security: []`), plain text, nothing revealed.
    let probe = |id: &str, summary: &str, answers: Value| json!({"get": {"operationId": id, "tags": ["meta"], "summary": summary, "security": [], "responses": answers}});
    let text = |d: &str| json!({"description": d, "content": {"text/plain": {"schema": {"type": "string"}}}});
    paths.insert(
        "/healthz".into(),
        probe("healthz", "Alive: 200 `ok` while the process serves", json!({"200": text("alive")})),
    );
    paths.insert("/readyz".into(), probe("readyz",
        "Ready: 200 `ready` when the store answers within 2 s and the configured boot HTTP and TFTP listeners are bound, else 503 `not ready` (the log says why)",
        json!({"200": text("ready"), "503": text("not ready")})));
    paths.insert("/api/v1/openapi.json".into(), json!({"get": {"operationId": "openapi", "tags": ["meta"], "summary": "This document",
        "responses": merge(json!({"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}), error_responses(&["401"]))}}));
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["error", "detail"], "properties": {
        "error": {"type": "string", "description": "machine-readable code"},
        "detail": {"type": "string", "description": "what was wrong and what to do"},
        "field": {"type": "string", "description": "the offending field, when one is to blame"}}}),
    );
    complete_responses(&mut paths);
    add_links(&mut paths);
    let responses: Map<String, Value> = [
        ("400", "invalid request: bad JSON, wrong types, unknown fields, failed validation"),
        ("401", "missing, invalid or expired credentials"),
        ("403", "the credentials do not allow this: no role of the user (or the token's restriction) claims it, or a machine token outside its machine"),
        ("404", "no such object or kind"),
        ("409", "the request conflicts with the store's current state: the key is taken, a unique value is held by another object, the object is named by others or owned by a content pack, a name in the request is of an object that does not exist (`reference`, with `field`), a param value its param's schema refuses (`param_value`), or the body's key differs from the URL's (`key_mismatch`)"),
        ("412", "If-Match names a stale revision"),
        ("405", "the path does not take this method; `Allow` lists those it takes"),
        ("413", "body too large"),
        ("415", "body is not JSON"),
        ("429", "too many failed logins from this address or for this user; `Retry-After` says when to retry"),
        ("500", "the server failed (logged there)"),
        ("503", "the request took longer than the server allows, or the store is busy"),
        ("502", "the machine's BMC failed: unreachable, bad credentials, unsupported, TLS, or an unexpected answer (in `detail`)"),
    ]
    .into_iter()
    .map(|(c, d)| (c.to_owned(), json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})))
    .collect();
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Plinth API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Provisioning for bare metal and cloud machines. Every route needs a bearer token except POST /api/v1/auth/token, GET /healthz and GET /readyz."},
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

/// Gives every operation every error status it can answer, all with the
/// JSON error body: 400 (every request can be malformed), 401 (but the
/// login, which answers it for bad credentials too), 403, 500 and 503;
/// 404 where the path names an object; 409 for writes; 412 with
/// `If-Match`; 413 and 415 with a body; 429 at the login. Request
/// objects that list their properties take no others, as the server's
/// types (`deny_unknown_fields`) refuse them.
fn complete_responses(paths: &mut Map<String, Value>) {
    for (path, ops) in paths.iter_mut() {
        let templated = path.contains('{');
        let Some(ops) = ops.as_object_mut() else { continue };
        for (method, op) in ops.iter_mut() {
            if !matches!(method.as_str(), "get" | "post" | "put" | "patch" | "delete") {
                continue;
            }
            // The probes answer only what they document.
            if op.get("security").is_some_and(|s| s == &json!([])) {
                continue;
            }
            let has_body = op.get("requestBody").is_some();
            let has_if_match = op
                .get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "If-Match"));
            let mut codes = vec!["400", "401", "403", "500", "503"];
            if templated || path.starts_with("/api/v1/contents") {
                codes.push("404");
            }
            if method != "get" {
                codes.push("409");
            }
            if has_if_match {
                codes.push("412");
            }
            if has_body {
                codes.extend(["413", "415"]);
            }
            if path == "/api/v1/auth/token" {
                codes.push("429");
            }
            if let Some(Value::Object(r)) = op.get_mut("responses") {
                for c in codes {
                    r.entry(c).or_insert_with(|| json!({"$ref": format!("#/components/responses/{c}")}));
                }
            }
            if let Some(Value::Object(content)) = op.get_mut("requestBody").and_then(|b| b.get_mut("content")) {
                for media in content.values_mut() {
                    if let Some(schema) = media.get_mut("schema") {
                        close_objects(schema);
                    }
                }
            }
        }
    }
}

/// `additionalProperties: false` on every inline object schema that lists
/// its properties and says nothing of others.
fn close_objects(v: &mut Value) {
    if let Value::Object(m) = v {
        // Only an object's own schema is closed, not a branch of `anyOf`
        // or `oneOf` that constrains some of its properties.
        let object =
            m.get("type").is_some_and(|t| t == "object" || t.as_array().is_some_and(|a| a.contains(&json!("object"))));
        if object && m.contains_key("properties") && !m.contains_key("additionalProperties") {
            m.insert("additionalProperties".into(), Value::Bool(false));
        }
        for (k, child) in m.iter_mut() {
            if k == "properties" {
                if let Value::Object(props) = child {
                    props.values_mut().for_each(close_objects);
                }
            } else if matches!(k.as_str(), "items" | "anyOf" | "oneOf" | "allOf") {
                match child {
                    Value::Array(a) => a.iter_mut().for_each(close_objects),
                    other => close_objects(other),
                }
            }
        }
    }
}

/// OpenAPI links from each create to the get, update and delete of what it
/// created, and from a created machine or job to its own routes, so a client
/// (or a stateful test) can follow a resource's life.
fn add_links(paths: &mut Map<String, Value>) {
    let mut links: Vec<(String, Map<String, Value>)> = Vec::new();
    for kind in Kind::ALL {
        let plural = kind.plural();
        let key = kind.key_field();
        let item = format!("/api/v1/{plural}/{{key}}");
        let mut l = Map::new();
        for (method, verb) in [("get", "Get"), ("put", "Replace"), ("patch", "Patch"), ("delete", "Delete")] {
            if paths.get(&item).and_then(|p| p.get(method)).is_some() {
                l.insert(
                    format!("{verb}Created"),
                    json!({"operationId": format!("{}_{plural}", if method == "get" { "get" } else if method == "put" { "replace" } else { method }),
                        "parameters": {"key": format!("$response.body#/{key}")},
                        "description": format!("the {plural} object just created, by its `{key}`")}),
                );
            }
        }
        let own = match kind {
            Kind::Machine => "/api/v1/machines/{id}/",
            Kind::Job => "/api/v1/jobs/{id}/",
            _ => "",
        };
        if !own.is_empty() {
            for (p, ops) in paths.iter() {
                if let Some(rest) = p.strip_prefix(own) {
                    for (method, op) in ops.as_object().into_iter().flatten() {
                        if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                            l.insert(
                                format!("{}{}", rest.replace('-', "_"), method),
                                json!({"operationId": id, "parameters": {"id": format!("$response.body#/{key}")}}),
                            );
                        }
                    }
                }
            }
        }
        links.push((format!("/api/v1/{plural}"), l));
    }
    for (path, l) in links {
        if let Some(created) = paths
            .get_mut(&path)
            .and_then(|p| p.get_mut("post"))
            .and_then(|o| o.get_mut("responses"))
            .and_then(|r| r.get_mut("201"))
        {
            created["links"] = Value::Object(l);
        }
    }
}

fn merge(mut a: Value, b: Map<String, Value>) -> Value {
    if let Value::Object(m) = &mut a {
        m.extend(b);
    }
    a
}

/// The document, built once.
fn cached() -> &'static Value {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOC.get_or_init(build)
}

/// The methods the document gives the path `path` (`Allow`'s value, with
/// `HEAD` wherever `GET` is, and `OPTIONS`), or `None` for a path it does
/// not have. The template with the most literal segments wins, as the
/// router's does (`/machines/whoami` over `/machines/{key}`).
pub fn allowed_methods(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut best: Option<(usize, &Map<String, Value>)> = None;
    for (template, ops) in cached()["paths"].as_object()? {
        let t: Vec<&str> = template.split('/').collect();
        if t.len() != segs.len() {
            continue;
        }
        let mut literal = 0;
        let fits = t.iter().zip(&segs).all(|(a, b)| {
            if a.starts_with('{') {
                !b.is_empty()
            } else {
                literal += 1;
                a == b
            }
        });
        if fits && best.is_none_or(|(l, _)| literal > l) {
            best = ops.as_object().map(|o| (literal, o));
        }
    }
    let ops = best?.1;
    let mut methods: Vec<&str> = Vec::new();
    for m in ["get", "post", "put", "patch", "delete"] {
        if ops.contains_key(m) {
            methods.push(match m {
                "get" => "GET, HEAD",
                "post" => "POST",
                "put" => "PUT",
                "patch" => "PATCH",
                _ => "DELETE",
            });
        }
    }
    methods.push("OPTIONS");
    Some(methods.join(", "))
}

/// `GET /api/v1/openapi.json`.
pub async fn document(State(_): State<AppState>) -> Json<Value> {
    Json(cached().clone())
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
