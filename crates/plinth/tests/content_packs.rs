//! Content packs through a running server and the CLI: the day-2 scenario
//! (install v1, customise the site, enroll 50 machines, plan v2 with a
//! changed kickstart part, a new required param and a stricter schema, fix
//! the site, upgrade, roll back — checking every rendered file at each
//! step), the layering rules, and all-or-nothing installs across a crash.

mod common;

use common::{Api, Server, ok};
use serde_json::{Value, json};
use std::path::Path;

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// The scenario's pack, version 1 or 2, as a directory.
fn pack(dir: &Path, v2: bool) {
    let version = if v2 { "2.0.0" } else { "1.0.0" };
    write(
        dir,
        "pack.yaml",
        &format!("name: site-base\nversion: {version}\ndescription: the day-2 scenario\nplinth: \">=0.1\"\n"),
    );
    let min = if v2 { 16 } else { 10 };
    write(
        dir,
        "params/params.yaml",
        &format!(
            "- name: site-ntp\n  schema: {{type: string, default: pool.ntp.org}}\n- name: disk-size\n  schema: {{type: integer, minimum: {min}}}\n- name: role\n  schema: {{type: string, enum: [web, db]}}\n{}",
            if v2 { "- name: location\n  schema: {type: string}\n" } else { "" }
        ),
    );
    let part = if v2 {
        "part / --size={{ param('disk-size') }}G --fstype=xfs\n"
    } else {
        "part / --size={{ param('disk-size') }}G\n"
    };
    write(dir, "templates/ks.part.tmpl", part);
    let ks = if v2 {
        "# kickstart for {{ machine.name }}\ntimesource --ntp-server={{ param('site-ntp') }}\n{% include 'ks.part' %}\nrole {{ param('role', 'none') }}\nlocation {{ param('location') }}\n"
    } else {
        "# kickstart for {{ machine.name }}\ntimesource --ntp-server={{ param('site-ntp') }}\n{% include 'ks.part' %}\nrole {{ param('role', 'none') }}\n"
    };
    write(dir, "templates/ks.tmpl", ks);
    let required = if v2 { "required_params: [location]\n" } else { "" };
    write(
        dir,
        "bootenvs/inst.yaml",
        &format!("name: inst\ntemplates:\n  - {{name: ks, template: ks, path: ks.cfg}}\n{required}"),
    );
    write(
        dir,
        "profiles/pack-defaults.yaml",
        &format!("name: pack-defaults\nparams: {{disk-size: {}}}\n", if v2 { 25 } else { 20 }),
    );
}

/// What machine `i` of the scenario renders as its kickstart.
fn expected_ks(i: usize, disk: u64, v2: bool) -> String {
    let ntp = if i.is_multiple_of(2) { "10.0.0.123" } else { "pool.ntp.org" };
    let role = if i.is_multiple_of(3) { "db" } else { "web" };
    if v2 {
        format!(
            "# kickstart for m-{i:02}\ntimesource --ntp-server={ntp}\npart / --size={disk}G --fstype=xfs\nrole {role}\nlocation dc1"
        )
    } else {
        format!("# kickstart for m-{i:02}\ntimesource --ntp-server={ntp}\npart / --size={disk}G\nrole {role}")
    }
}

async fn ks_of(api: &Api, id: &str) -> String {
    let r = api.post("/api/v1/render", json!({"machine": id, "bootenv_file": "ks.cfg"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["output"].as_str().unwrap().to_owned()
}

fn changes(plan: &Value) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = plan["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["change"].as_str().unwrap().into(),
                o["kind"].as_str().unwrap().into(),
                o["key"].as_str().unwrap().into(),
            )
        })
        .collect();
    v.sort();
    v
}

fn cli_json(server: &Server, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok(server.cli(&all, None))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_two_upgrade_is_planned_per_machine_then_applied_and_rolled_back() {
    let server = Server::start();
    let api = server.api().await;
    let work = tempfile::tempdir().unwrap();
    let (v1, v2) = (work.path().join("v1"), work.path().join("v2"));
    pack(&v1, false);
    pack(&v2, true);
    let pw = work.path().join("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));

    // The bundle round-trips through a directory, byte for byte.
    let bundle = work.path().join("v1.json");
    ok(server.cli(&["content", "bundle", v1.to_str().unwrap(), "-O", bundle.to_str().unwrap()], None));
    let again = work.path().join("again");
    ok(server.cli(&["content", "unbundle", bundle.to_str().unwrap(), again.to_str().unwrap()], None));
    let rebundled = ok(server.cli(&["content", "bundle", again.to_str().unwrap()], None));
    assert_eq!(rebundled, std::fs::read_to_string(&bundle).unwrap());

    // v1: installed from the bundle.
    let plan = cli_json(&server, &["content", "install", bundle.to_str().unwrap()]);
    assert_eq!(plan["errors"], json!([]), "{plan}");
    assert_eq!(changes(&plan).len(), 7, "{plan}");
    let ks = api.get("/api/v1/templates/ks").await.body;
    assert_eq!((ks["meta"]["pack"].as_str(), ks["meta"]["pack_version"].as_str()), (Some("site-base"), Some("1.0.0")));

    // The site: a profile of its own, one override of a pack object, and
    // 50 machines with their own params.
    api.post("/api/v1/profiles", json!({"name": "rack-a", "params": {"site-ntp": "10.0.0.123"}})).await;
    let r = api
        .send(
            reqwest::Method::PATCH,
            "/api/v1/profiles/pack-defaults",
            Some(json!({"params": {"disk-size": 30}})),
            None,
        )
        .await;
    assert_eq!(r.status, 409, "a pack's object changes only as an override: {}", r.body);
    let r = api
        .send(
            reqwest::Method::PATCH,
            "/api/v1/profiles/pack-defaults?override=true",
            Some(json!({"params": {"disk-size": 30}})),
            None,
        )
        .await;
    assert_eq!((r.status, r.body["meta"]["override"].as_str()), (200, Some("site-base")), "{}", r.body);
    assert!(r.body["meta"].get("pack").is_none());
    assert_eq!(api.send(reqwest::Method::DELETE, "/api/v1/templates/ks", None, None).await.status, 409);
    let mut ids = Vec::new();
    for i in 0..50usize {
        let mut params = json!({"role": if i.is_multiple_of(3) { "db" } else { "web" }});
        // Ten of them set their own disk size (10..=19); the rest take the profile's.
        if i.is_multiple_of(5) {
            params["disk-size"] = json!(10 + (i / 5) as u64);
        }
        let profiles = if i.is_multiple_of(2) { json!(["rack-a", "pack-defaults"]) } else { json!(["pack-defaults"]) };
        let m = api
            .post(
                "/api/v1/machines",
                json!({"name": format!("m-{i:02}"), "bootenv": "inst", "params": params, "profiles": profiles}),
            )
            .await;
        assert_eq!(m.status, 201, "{}", m.body);
        ids.push(m.body["id"].as_str().unwrap().to_owned());
    }
    let disk = |i: usize, fixed: bool| -> u64 {
        if i.is_multiple_of(5) {
            let own = 10 + (i / 5) as u64;
            if fixed { own.max(16) } else { own }
        } else {
            30
        }
    };
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(ks_of(&api, id).await, expected_ks(i, disk(i, false), false), "m-{i:02} on v1");
    }

    // The plan for v2: object changes, the override kept, the schema
    // violations (machines whose own disk size is under the new minimum)
    // and every machine lacking the new required param.
    let plan = cli_json(&server, &["content", "plan", v2.to_str().unwrap()]);
    let want: Vec<(String, String, String)> = [
        ("added", "params", "location"),
        ("changed", "bootenvs", "inst"),
        ("changed", "params", "disk-size"),
        ("changed", "templates", "ks"),
        ("changed", "templates", "ks.part"),
        ("override-kept", "profiles", "pack-defaults"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(changes(&plan), want, "{plan}");
    let mut violations: Vec<String> = plan["schema_violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["location"].as_str().unwrap().to_owned())
        .collect();
    violations.sort();
    let too_small: Vec<String> = (0..50usize)
        .filter(|i| i.is_multiple_of(5) && 10 + i / 5 < 16)
        .map(|i| format!("machine `m-{i:02}`"))
        .collect();
    assert_eq!(violations, too_small, "{plan}");
    assert_eq!(plan["machines"].as_array().unwrap().len(), 50, "every machine lacks `location`");
    assert!(plan["machines"].as_array().unwrap().iter().all(|m| !m["errors"].as_array().unwrap().is_empty()));
    assert!(plan["errors"].as_array().unwrap().iter().any(|e| e.as_str().unwrap().contains("location")));
    // Refused while the plan has errors; nothing changed.
    let refused = server.cli(&["content", "install", v2.to_str().unwrap()], None);
    assert_eq!(refused.status.code(), Some(4), "{}", String::from_utf8_lossy(&refused.stderr));
    assert_eq!(api.get("/api/v1/contents/site-base").await.body["version"], "1.0.0");
    assert_eq!(ks_of(&api, &ids[1]).await, expected_ks(1, 30, false));

    // Fix the site: define the new param as v2 does and set it on
    // `global`; raise the disks the new schema refuses.
    let r = api
        .send(reqwest::Method::PATCH, "/api/v1/profiles/global", Some(json!({"params": {"location": "dc1"}})), None)
        .await;
    assert_eq!(r.status, 409, "`location` is not defined yet: {}", r.body);
    assert_eq!(api.post("/api/v1/params", json!({"name": "location", "schema": {"type": "string"}})).await.status, 201);
    let r = api
        .send(reqwest::Method::PATCH, "/api/v1/profiles/global", Some(json!({"params": {"location": "dc1"}})), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for (i, id) in ids.iter().enumerate() {
        if disk(i, false) < 16 {
            let patch = json!({"params": {"disk-size": 16}});
            let r = api.send(reqwest::Method::PATCH, &format!("/api/v1/machines/{id}"), Some(patch), None).await;
            assert_eq!(r.status, 200);
        }
    }
    // Now the plan is clean: the site's identical `location` is adopted,
    // and every machine's kickstart differs exactly in the part and the
    // location.
    let plan = cli_json(&server, &["content", "plan", v2.to_str().unwrap()]);
    assert_eq!((&plan["errors"], &plan["schema_violations"]), (&json!([]), &json!([])), "{plan}");
    assert!(changes(&plan).contains(&("adopted".into(), "params".into(), "location".into())), "{plan}");
    assert_eq!(plan["machines"].as_array().unwrap().len(), 50);
    let m3 = plan["machines"].as_array().unwrap().iter().find(|m| m["name"] == "m-03").unwrap().clone();
    assert_eq!(m3["workflow_affected"], false);
    assert_eq!(m3["files"].as_array().unwrap().len(), 1, "{m3}");
    assert_eq!(m3["files"][0]["file"], "bootenv inst: ks.cfg");
    assert_eq!(
        m3["files"][0]["diff"],
        "--- a/bootenv inst: ks.cfg\n+++ b/bootenv inst: ks.cfg\n@@ -1,4 +1,5 @@\n # kickstart for m-03\n timesource --ntp-server=pool.ntp.org\n-part / --size=30G\n+part / --size=30G --fstype=xfs\n role db\n+location dc1\n"
    );
    // Every machine's diff is exactly its kickstart before and after.
    for m in plan["machines"].as_array().unwrap() {
        let i: usize = m["name"].as_str().unwrap()[2..].parse().unwrap();
        let want = plinth_content::unified_diff(
            "bootenv inst: ks.cfg",
            &expected_ks(i, disk(i, true), false),
            &expected_ks(i, disk(i, true), true),
        );
        assert_eq!(m["files"].as_array().unwrap().len(), 1);
        assert_eq!(m["files"][0]["diff"].as_str(), want.as_deref(), "m-{i:02}");
    }
    // The plan changed nothing.
    assert_eq!(ks_of(&api, &ids[3]).await, expected_ks(3, 30, false));
    // A canary first: m-03 and m-04 take v2, the other 48 stay on v1.
    let plan = cli_json(&server, &["content", "plan", v2.to_str().unwrap(), "--canary", "m-03,m-04"]);
    assert_eq!((plan["pinned"].as_u64(), plan["machines"].as_array().unwrap().len()), (Some(48), 2), "{plan}");
    let plan = cli_json(&server, &["content", "install", v2.to_str().unwrap(), "--canary", "m-03,m-04"]);
    assert_eq!(plan["to"], "2.0.0", "{plan}");
    assert_eq!(api.get("/api/v1/contents/site-base").await.body["version"], "2.0.0");
    for (i, id) in ids.iter().enumerate() {
        let v2_now = i == 3 || i == 4;
        assert_eq!(ks_of(&api, id).await, expected_ks(i, disk(i, true), v2_now), "m-{i:02} during the canary");
        let pin = api.get(&format!("/api/v1/machines/{id}")).await.body["meta"]["pin:site-base"].clone();
        assert_eq!(pin, if v2_now { Value::Null } else { json!("1.0.0") });
    }
    // Then the rest.
    let plan = cli_json(&server, &["content", "promote", "site-base"]);
    assert_eq!(plan["pinned"], 0, "{plan}");
    assert_eq!(api.get("/api/v1/contents/site-base").await.body["version"], "2.0.0");
    // The override survived the upgrade.
    assert_eq!(api.get("/api/v1/profiles/pack-defaults").await.body["params"]["disk-size"], 30);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(ks_of(&api, id).await, expected_ks(i, disk(i, true), true), "m-{i:02} on v2");
    }

    // Roll back: v1 has no `location`, which `global` still sets: refused,
    // naming it, until the value is cleared; then v1's objects again, the
    // site's changes kept.
    let refused = server.cli(&["content", "rollback", "site-base"], None);
    assert_eq!(refused.status.code(), Some(4), "{}", String::from_utf8_lossy(&refused.stderr));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("`location` would be removed but profile `global` sets a value"), "{why}");
    assert_eq!(api.get("/api/v1/contents/site-base").await.body["version"], "2.0.0");
    let r = api
        .send(reqwest::Method::PATCH, "/api/v1/profiles/global", Some(json!({"params": {"location": null}})), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let plan = cli_json(&server, &["content", "rollback", "site-base"]);
    assert_eq!(plan["to"], "1.0.0", "{plan}");
    assert_eq!(api.get("/api/v1/contents/site-base").await.body["version"], "1.0.0");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(ks_of(&api, id).await, expected_ks(i, disk(i, true), false), "m-{i:02} rolled back");
    }
    assert_eq!(api.get("/api/v1/params/disk-size").await.body["schema"]["minimum"], 10);
    // Every step is in the audit log, by the user who did it.
    let audit = api.get("/api/v1/audit?kind=contents&key=site-base").await.body;
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["created", "updated", "updated", "updated"],
        "install, canary upgrade, promote, rollback: {audit}"
    );
}

/// A small pack `name` with the given templates (`(name, text)`).
fn small_pack(dir: &Path, name: &str, version: &str, extra: &str, templates: &[(&str, &str)]) {
    write(dir, "pack.yaml", &format!("name: {name}\nversion: {version}\n{extra}"));
    for (t, text) in templates {
        write(dir, &format!("templates/{t}.tmpl"), text);
    }
}

async fn install(api: &Api, dir: &Path, query: &str) -> (u16, Value) {
    let pack = plinth_content::pack::load_dir(dir).unwrap();
    let r = api.post(&format!("/api/v1/contents/install{query}"), pack.to_bundle()).await;
    (r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layering_rules_hold_and_bad_packs_list_every_problem() {
    let server = Server::start();
    let api = server.api().await;
    let work = tempfile::tempdir().unwrap();
    let d = |n: &str| work.path().join(n);

    // Pack `a` installs a template and a bootenv using it.
    small_pack(&d("a1"), "a", "1.0.0", "", &[("shared-t", "from a")]);
    write(&d("a1"), "bootenvs/a-env.yaml", "name: a-env\ntemplates: [{name: f, template: shared-t, path: f.txt}]\n");
    assert_eq!(install(&api, &d("a1"), "").await.0, 200);

    // Another pack may not take `a`'s object unless it says it overrides `a`.
    small_pack(&d("b1"), "b", "1.0.0", "", &[("shared-t", "from b")]);
    let (st, body) = install(&api, &d("b1"), "").await;
    assert_eq!(st, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("belongs to pack `a`"), "{body}");
    assert_eq!(api.get("/api/v1/templates/shared-t").await.body["contents"], "from a", "nothing changed");
    assert_eq!(api.get("/api/v1/contents/b").await.status, 404);
    small_pack(&d("b2"), "b", "1.0.0", "overrides: [a]\n", &[("shared-t", "from b")]);
    let (st, body) = install(&api, &d("b2"), "").await;
    assert_eq!(st, 200, "{body}");
    assert!(changes(&body).contains(&("taken-over".into(), "templates".into(), "shared-t".into())));
    let t = api.get("/api/v1/templates/shared-t").await.body;
    assert_eq!((t["contents"].as_str(), t["meta"]["pack"].as_str()), (Some("from b"), Some("b")));

    // A site object of the same name: refused when it differs, adopted
    // when identical (or forced).
    api.post("/api/v1/templates", json!({"name": "site-t", "contents": "site's"})).await;
    api.post("/api/v1/templates", json!({"name": "same-t", "contents": "same"})).await;
    small_pack(&d("c1"), "c", "1.0.0", "", &[("site-t", "pack's"), ("same-t", "same")]);
    let (st, body) = install(&api, &d("c1"), "").await;
    assert_eq!(st, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("templates `site-t` already exists as a site object"));
    assert!(!body["detail"].as_str().unwrap().contains("same-t"), "identical objects are adopted: {body}");
    let (st, body) = install(&api, &d("c1"), "?force=true").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(api.get("/api/v1/templates/site-t").await.body["meta"]["pack"], "c");

    // A site override survives removal of its pack; the rest goes.
    let r = api
        .send(reqwest::Method::PATCH, "/api/v1/templates/site-t?override=true", Some(json!({"contents": "mine"})), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Removing what is in use is refused, and changes nothing.
    let m = api.post("/api/v1/machines", json!({"name": "user-of-a", "bootenv": "a-env"})).await.body;
    let r = api.send(reqwest::Method::DELETE, "/api/v1/contents/a", None, None).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("bootenvs `a-env` would be removed but is used by machine `user-of-a`")
    );
    assert_eq!(api.get("/api/v1/bootenvs/a-env").await.status, 200);
    api.send(
        reqwest::Method::PATCH,
        &format!("/api/v1/machines/{}", m["id"].as_str().unwrap()),
        Some(json!({"bootenv": "local"})),
        None,
    )
    .await;
    let r = api.send(reqwest::Method::DELETE, "/api/v1/contents/a", None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(api.get("/api/v1/bootenvs/a-env").await.status, 404);
    assert_eq!(api.get("/api/v1/contents/a").await.status, 404);
    let r = api.send(reqwest::Method::DELETE, "/api/v1/contents/c", None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let kept = api.get("/api/v1/templates/site-t").await.body;
    assert_eq!((kept["contents"].as_str(), kept["meta"]["override"].as_str()), (Some("mine"), Some("c")));
    assert_eq!(api.get("/api/v1/templates/same-t").await.status, 404);
    // Nothing to roll back to.
    assert_eq!(api.post("/api/v1/contents/b/rollback", json!({})).await.status, 404);
    // Packs change only through these routes.
    assert_eq!(api.send(reqwest::Method::PUT, "/api/v1/contents/b", Some(json!({})), None).await.status, 405);
    assert_eq!(api.post("/api/v1/contents", json!({"name": "x"})).await.status, 405);

    // The site layer, exported as a pack: the override and the site's own
    // objects, no pack object and no built-in.
    let pw = d("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
    let out = d("exported");
    ok(server.cli(
        &["content", "export", "--site", "--name", "my-site", "--pack-version", "1.2.3", out.to_str().unwrap()],
        None,
    ));
    let exported = plinth_content::pack::load_dir(&out).unwrap();
    assert_eq!((exported.manifest.name.as_str(), exported.manifest.version.as_str()), ("my-site", "1.2.3"));
    let keys: Vec<String> = exported.objects.iter().map(|(k, key, _)| format!("{}/{key}", k.plural())).collect();
    assert!(keys.contains(&"templates/site-t".to_owned()) && keys.contains(&"profiles/global".to_owned()), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k == "templates/shared-t" || k == "templates/kickstart" || k == "bootenvs/local"),
        "{keys:?}"
    );
    assert_eq!(std::fs::read_to_string(out.join("templates/site-t.tmpl")).unwrap(), "mine");

    // The CLI overrides a pack object only when told to.
    let refused = server.cli(&["templates", "patch", "shared-t", "--data", r#"{"contents": "cli"}"#], None);
    assert_eq!(refused.status.code(), Some(4));
    let patched: Value = serde_json::from_str(&ok(server.cli(
        &["templates", "patch", "shared-t", "--override", "-o", "json", "--data", r#"{"contents": "cli"}"#],
        None,
    )))
    .unwrap();
    assert_eq!((patched["contents"].as_str(), patched["meta"]["override"].as_str()), (Some("cli"), Some("b")));

    // A broken pack: every problem listed, by file.
    let bad = d("bad");
    write(&bad, "pack.yaml", "name: Bad Name\nversion: one\nrequires: [{name: a, version: \"~~1\"}]\n");
    write(&bad, "templates/broken.tmpl", "{% if %}");
    write(&bad, "templates/notes.txt", "stray");
    write(
        &bad,
        "params/p.yaml",
        "- {name: p, schema: {type: string}}\n- {name: p, schema: {type: string}}\n- {name: q, schema: 5}\n",
    );
    write(&bad, "bootenvs/b.yaml", "name: b\nvariants: [{arch: mips}]\n");
    let out = server.cli(&["content", "validate", bad.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "`name`",
        "`version`",
        "requires[0]",
        "broken",
        "notes.txt",
        "defined twice",
        "params/p.yaml[2]",
        "bootenvs/b.yaml",
    ] {
        assert!(err.contains(want), "{want} in:\n{err}");
    }
    let pack = plinth_content::pack::load_dir(&bad);
    assert!(pack.is_err());
    let r = api
        .post(
            "/api/v1/contents/plan",
            json!({"format": "plinth-pack/1", "manifest": {"name": "x"}, "objects": [{"kind": "users"}]}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_killed_midway_leaves_the_old_version_or_the_new_never_a_mix() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let n = 3000;
    let texts = |v: &str| -> Vec<(String, String)> {
        (0..n).map(|i| (format!("t-{i:04}"), format!("{v} of t-{i:04}"))).collect()
    };
    let make = |version: &str, tag: &str| {
        let p = work.path().join(version);
        let t = texts(tag);
        let refs: Vec<(&str, &str)> = t.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        small_pack(&p, "big", version, "", &refs);
        plinth_content::pack::load_dir(&p).unwrap().to_bundle()
    };
    let bundles = [make("1.0.0", "v1"), make("2.0.0", "v2")];
    let mut server = Server::start_in(dir.path());
    let api = server.api().await;
    let r = api.post("/api/v1/contents/install", bundles[0].clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut outcomes = Vec::new();
    for (round, delay_ms) in [30u64, 80, 150, 300, 600, 1200].into_iter().enumerate() {
        let api = server.api().await;
        // Upgrade to the other version than the one installed.
        let installed = api.get("/api/v1/contents/big").await.body["version"].as_str().unwrap().to_owned();
        let target = if installed == "1.0.0" { bundles[1].clone() } else { bundles[0].clone() };
        let req = tokio::spawn(async move { api.post("/api/v1/contents/install", target).await.status });
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        server.kill9();
        let _ = req.await;
        server = Server::start_in(dir.path());
        let api = server.api().await;
        let version = api.get("/api/v1/contents/big").await.body["version"].as_str().unwrap().to_owned();
        let tag = if version == "1.0.0" { "v1" } else { "v2" };
        let all = api.get("/api/v1/templates?limit=10000").await.body;
        let ours: Vec<&Value> =
            all["items"].as_array().unwrap().iter().filter(|t| t["meta"]["pack"] == "big").collect();
        assert_eq!(ours.len(), n, "round {round}");
        for t in ours {
            assert!(t["contents"].as_str().unwrap().starts_with(tag), "round {round}: {version} but {}", t["contents"]);
            assert_eq!(t["meta"]["pack_version"], version.as_str());
        }
        outcomes.push(version != installed);
    }
    // Some rounds were cut before the commit and some after (timing
    // decides which); either way the store was whole.
    println!("upgrade landed in rounds: {outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_content_is_the_default_pack_and_adopts_what_an_earlier_plinth_installed() {
    // A fresh server installs it as a pack, with the common tasks.
    let server = Server::start();
    let api = server.api().await;
    let pack = api.get("/api/v1/contents/plinth-default").await.body;
    assert_eq!(pack["version"], env!("CARGO_PKG_VERSION"), "{pack}");
    for (kind, key) in [
        ("templates", "kickstart"),
        ("bootenvs", "discovery"),
        ("tasks", "set-hostname"),
        ("tasks", "ssh-keys"),
        ("tasks", "agent-service"),
        ("tasks", "site-hook"),
        ("tasks", "firmware-settings"),
        ("workflows", "base-configure"),
    ] {
        let o = api.get(&format!("/api/v1/{kind}/{key}")).await.body;
        assert_eq!(o["meta"]["pack"], "plinth-default", "{kind}/{key}: {o}");
    }
    drop(server);

    // A store an earlier Plinth filled (no pack), with one built-in template
    // edited by the site: the default pack adopts the rest and keeps the
    // edit as the site's override.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = plinth_store::SqliteStore::open(&dir.path().join("plinth.db")).unwrap();
        plinth_content::install_missing(&store).await.unwrap();
        let r = plinth_store::StoreExt::list_all(&store, plinth_model::Kind::Template, vec![]).await.unwrap();
        let mut local = r.into_iter().find(|t| t.key == "ipxe-local").unwrap();
        local.body["contents"] = json!("#!ipxe\necho edited by the site\nexit\n");
        let op = plinth_store::WriteOp::Put {
            kind: plinth_model::Kind::Template,
            key: "ipxe-local".into(),
            body: local.body,
            expect: plinth_store::Expect::Revision(local.revision),
        };
        plinth_store::Store::apply(&store, vec![op]).await.unwrap();
    }
    let server = Server::start_in(dir.path());
    let api = server.api().await;
    assert_eq!(api.get("/api/v1/contents/plinth-default").await.body["version"], env!("CARGO_PKG_VERSION"));
    let edited = api.get("/api/v1/templates/ipxe-local").await.body;
    assert_eq!(edited["contents"], "#!ipxe\necho edited by the site\nexit\n");
    assert_eq!(edited["meta"]["override"], "plinth-default", "{edited}");
    assert_eq!(api.get("/api/v1/templates/kickstart").await.body["meta"]["pack"], "plinth-default");
    assert_eq!(api.get("/api/v1/tasks/site-hook").await.body["meta"]["pack"], "plinth-default", "new objects added");
    // A restart changes nothing more.
    drop(server);
    let server = Server::start_in(dir.path());
    let api = server.api().await;
    let audit = api.get("/api/v1/audit?kind=contents&key=plinth-default").await.body;
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "{audit}");
}

/// A pack whose workflow grows a stage and whose task changes its script
/// and retry policy between versions.
fn workflow_pack(dir: &Path, v2: bool) {
    small_pack(dir, "rollout", if v2 { "2.0.0" } else { "1.0.0" }, "", &[]);
    let (script, retries) = if v2 { ("echo v2", 2) } else { ("echo v1", 0) };
    write(
        dir,
        "tasks/tasks.yaml",
        &format!(
            "- name: prep\n  retries: {retries}\n  templates: [{{name: run, contents: \"{script}\"}}]\n- name: extra\n  templates: [{{name: run, contents: \"echo extra\"}}]\n"
        ),
    );
    write(dir, "stages/stages.yaml", "- name: prep\n  tasks: [prep]\n- name: extra\n  tasks: [extra]\n");
    let stages = if v2 { "[prep, extra]" } else { "[prep]" };
    write(dir, "workflows/workflows.yaml", &format!("- name: rollout\n  stages: {stages}\n"));
}

/// During a canary, a machine held back on the old version runs the old
/// version's workflow (stage list, task script, retry policy); the canary
/// runs the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_held_back_by_a_canary_runs_the_workflow_of_its_version() {
    let server = Server::start();
    let api = server.api().await;
    let work = tempfile::tempdir().unwrap();
    let (v1, v2) = (work.path().join("v1"), work.path().join("v2"));
    workflow_pack(&v1, false);
    workflow_pack(&v2, true);
    let (status, body) = install(&api, &v1, "").await;
    assert_eq!(status, 200, "{body}");
    let mut ids = Vec::new();
    for (name, mac) in [("canary", "52:54:00:ca:00:01"), ("held", "52:54:00:ca:00:02")] {
        let r = api.post("/api/v1/machines", json!({"name": name, "macs": [mac]})).await;
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let pack = plinth_content::pack::load_dir(&v2).unwrap();
    let r = api.post("/api/v1/contents/install?canary=canary", pack.to_bundle()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(api.get(&format!("/api/v1/machines/{}", ids[1])).await.body["meta"]["pin:rollout"], "1.0.0");

    // Runs the machine's workflow to its end, failing each job's first
    // attempt; returns the scripts run and the final state.
    let run = |id: String| {
        let api = &api;
        async move {
            let r = api.post(&format!("/api/v1/machines/{id}/workflow"), json!({"workflow": "rollout"})).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let mut scripts = Vec::new();
            let mut failed_once = std::collections::BTreeSet::new();
            for _ in 0..10 {
                let n = api.post(&format!("/api/v1/machines/{id}/next"), json!({"boot_id": "b"})).await.body;
                let Some(job) = n["job"]["id"].as_str().map(str::to_owned) else {
                    return (scripts, n["state"].as_str().unwrap_or_default().to_owned());
                };
                let files = api.get(&format!("/api/v1/jobs/{job}/files")).await.body;
                let script = files[0]["contents"].as_str().unwrap().to_owned();
                api.post(&format!("/api/v1/jobs/{job}/start"), json!({})).await;
                let code = if failed_once.insert(script.clone()) { 1 } else { 0 };
                let r = api.post(&format!("/api/v1/jobs/{job}/finish"), json!({"exit_code": code})).await;
                assert_eq!(r.status, 200, "{}", r.body);
                scripts.push(format!("{script}:{code}"));
            }
            panic!("the workflow did not end: {scripts:?}");
        }
    };
    // v2: two stages, and the failed first try is retried.
    assert_eq!(
        run(ids[0].clone()).await,
        (vec!["echo v2:1".into(), "echo v2:0".into(), "echo extra:1".into()], "failed".into())
    );
    // v1: one stage, no retries: the first failure stops it.
    assert_eq!(run(ids[1].clone()).await, (vec!["echo v1:1".to_owned()], "failed".to_owned()));
    // Promoted, the held machine runs v2.
    let r = api.post("/api/v1/contents/rollout/promote", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        run(ids[1].clone()).await,
        (vec!["echo v2:1".into(), "echo v2:0".into(), "echo extra:1".into()], "failed".into())
    );
}
