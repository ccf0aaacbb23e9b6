//! Images and the metadata service against the real server: `images
//! import` of a compressed file, the image's checks and references, the
//! image-deploy task as the machine's agent gets it (a real metadata token)
//! and as an operator reads it (a placeholder), and NoCloud and EC2
//! metadata served only with the machine's own, unexpired metadata token.

mod common;

use common::{Api, Server, ok};
use serde_json::{Value, json};

async fn post(api: &Api, path: &str, body: Value) -> Value {
    let r = api.send(reqwest::Method::POST, path, Some(body), None).await;
    assert!(r.status < 300, "{path}: {} {}", r.status, r.body);
    r.body
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A small raw "disk", zstd-compressed by the real tool.
fn zstd_image(dir: &std::path::Path) -> (std::path::PathBuf, usize) {
    let raw: Vec<u8> = (0..(2usize << 20)).map(|i| (i % 253) as u8).collect();
    let path = dir.join("tiny.raw");
    std::fs::write(&path, &raw).unwrap();
    let out = std::process::Command::new("zstd").args(["-q", "-f"]).arg(&path).status().unwrap();
    assert!(out.success());
    (dir.join("tiny.raw.zst"), raw.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_imported_checked_and_referenced() {
    if !common::have("zstd") {
        eprintln!("SKIPPED: no zstd");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path());
    let admin = server.api().await;
    let (file, raw_len) = zstd_image(dir.path());
    let pw = dir.path().join("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
    let files = server.files();
    let said =
        ok(server
            .cli(&["images", "import", "tiny", file.to_str().unwrap(), "--file-root", files.to_str().unwrap()], None));
    assert!(said.contains("raw.zst") && said.contains(&format!("{raw_len} bytes on disk")), "{said}");
    let image = common::cli_json(&server, &["images", "show", "tiny"]);
    assert_eq!(image["format"], "raw.zst");
    assert_eq!(image["path"], "images/tiny.raw.zst");
    assert_eq!(image["raw_size"], raw_len);
    assert_eq!(image["size"], std::fs::metadata(&file).unwrap().len());
    // Served by boot HTTP as it is, byte for byte.
    let served = reqwest::get(format!("http://{}/files/images/tiny.raw.zst", server.addr("http")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(served.as_ref(), std::fs::read(&file).unwrap().as_slice());
    // A wrong --sha256 imports nothing.
    let e = common::cli_err(
        &server,
        &[
            "images",
            "import",
            "other",
            file.to_str().unwrap(),
            "--sha256",
            &"0".repeat(64),
            "--file-root",
            files.to_str().unwrap(),
        ],
    );
    assert!(e.contains("not imported"), "{e}");

    // The object's own checks.
    for (body, field) in [
        (json!({"name": "x", "path": "a", "url": "http://h/a", "size": 1, "sha256": "a".repeat(64)}), "url"),
        (json!({"name": "x", "path": "../etc/passwd", "size": 1, "sha256": "a".repeat(64)}), "path"),
        (json!({"name": "x", "url": "ftp://h/a", "size": 1, "sha256": "a".repeat(64)}), "url"),
        (json!({"name": "x", "path": "a", "size": 1, "sha256": "xyz"}), "sha256"),
        (json!({"name": "x", "path": "a", "size": 0, "sha256": "a".repeat(64)}), "size"),
        (json!({"name": "x", "path": "a", "size": 1, "sha256": "a".repeat(64), "format": "vmdk"}), "format"),
    ] {
        let r = admin.post("/api/v1/images", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.body.to_string().contains(field), "{body}: {}", r.body);
    }
    // Param `image` names an image: it must exist, and it is held.
    let r = admin.post("/api/v1/profiles", json!({"name": "p", "params": {"image": "nope"}})).await;
    assert_eq!(r.status, 409, "{}", r.body);
    post(&admin, "/api/v1/profiles", json!({"name": "p", "params": {"image": "tiny"}})).await;
    let r = admin.send(reqwest::Method::DELETE, "/api/v1/images/tiny", None, None).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.to_string().contains("profiles `p`"), "{}", r.body);
}

/// A machine token, as the machine gets it from a boot file.
async fn boot_credential(server: &Server, mac_dash: &str) -> String {
    let url = format!("http://{}/machines/{mac_dash}/agent.env", server.addr("http"));
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.trim().strip_prefix("PLINTH_TOKEN=").unwrap_or_else(|| panic!("{text}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_served_to_its_machines_token_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path());
    let admin = server.api().await;
    let http = server.addr("http");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, common::PASSWORD).unwrap();
    ok(server.cli(&["login", "--password-file", pw.to_str().unwrap()], None));
    post(
        &admin,
        "/api/v1/bootenvs",
        json!({"name": "agent-env", "templates": [
            {"name": "env", "path": "agent.env", "contents": "PLINTH_TOKEN={{ machine_token() }}"},
            {"name": "secret", "path": "secret.cfg", "contents": "password={{ secure_param('root-pw') }}"}]}),
    )
    .await;
    post(&admin, "/api/v1/params", json!({"name": "root-pw", "secure": true, "schema": {"type": "string"}})).await;
    post(
        &admin,
        "/api/v1/images",
        json!({"name": "deb", "path": "images/deb.raw.zst", "format": "raw.zst", "size": 1000,
            "raw_size": 4000, "sha256": "ab".repeat(32)}),
    )
    .await;
    post(
        &admin,
        "/api/v1/profiles",
        json!({"name": "site", "params": {"ssh-authorized-keys": ["ssh-ed25519 AAAAC3Nza test@site"],
            "cloud-init-write-files": [{"path": "/etc/plinth-site", "content": "from user-data\n"}]}}),
    )
    .await;
    let m = post(
        &admin,
        "/api/v1/machines",
        json!({"name": "web-1", "macs": ["52:54:00:0d:00:01"], "bootenv": "agent-env", "profiles": ["site"],
            "trusted": true, "params": {"hostname": "web-one", "image": "deb", "root-pw": "hunter2"}}),
    )
    .await;
    let id = m["id"].as_str().unwrap().to_owned();
    let other = post(
        &admin,
        "/api/v1/machines",
        json!({"name": "db-1", "macs": ["52:54:00:0d:00:02"], "bootenv": "agent-env"}),
    )
    .await;
    let other_id = other["id"].as_str().unwrap().to_owned();

    // The seed URL, as a cloud VM is given it.
    let seed = common::cli_json(&server, &["machines", "metadata-token", &id]);
    let url = seed["seed_url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("http://{http}/t/plt_")) && url.ends_with('/'), "{seed}");
    assert!(seed["smbios"].as_str().unwrap().contains("ds=nocloud-net;s="), "{seed}");
    let token = seed["token"].as_str().unwrap().to_owned();

    let (status, meta) = get(&format!("{url}meta-data")).await;
    assert_eq!(status, 200, "{meta}");
    assert!(meta.contains(&format!("instance-id: \"{id}\"")) && meta.contains("local-hostname: \"web-one\""), "{meta}");
    let (_, user) = get(&format!("{url}user-data")).await;
    assert!(user.starts_with("#cloud-config"), "{user}");
    assert!(user.contains("hostname: \"web-one\""), "the hostname param: {user}");
    assert!(user.contains("ssh-ed25519 AAAAC3Nza test@site"), "the profile's key: {user}");
    assert!(user.contains("/etc/plinth-site") && user.contains("from user-data"), "the file: {user}");
    let (_, vendor) = get(&format!("{url}vendor-data")).await;
    assert!(vendor.starts_with("#!/bin/sh") && vendor.contains("PLINTH_TOKEN=plt_"), "a boot credential: {vendor}");
    assert!(vendor.contains(&format!("PLINTH_MACHINE={id}")), "{vendor}");
    let (status, again) = get(&format!("{url}vendor-data")).await;
    assert_eq!(status, 404, "a metadata token hands out one boot credential: {again}");
    let (status, net) = get(&format!("{url}network-config")).await;
    assert_eq!(status, 200);
    assert!(net.contains("version: 2") && net.contains("dhcp4: true"), "{net}");
    // EC2's layout.
    let (_, listing) = get(&format!("{url}latest/meta-data/")).await;
    assert!(listing.lines().any(|l| l == "instance-id") && listing.lines().any(|l| l == "public-keys/"), "{listing}");
    assert_eq!(get(&format!("{url}latest/meta-data/instance-id")).await.1, id);
    assert_eq!(get(&format!("{url}latest/meta-data/local-hostname")).await.1, "web-one");
    assert_eq!(
        get(&format!("{url}2009-04-04/meta-data/public-keys/0/openssh-key")).await.1,
        "ssh-ed25519 AAAAC3Nza test@site"
    );
    assert!(get(&format!("{url}latest/user-data")).await.1.contains("web-one"));

    // A metadata token reads metadata only: no bootenv file, no API.
    let (status, _) = get(&format!("{url}secret.cfg")).await;
    assert_eq!(status, 404, "a metadata token gets no boot file");
    let (status, _) = get(&format!("{url}agent.env")).await;
    assert_eq!(status, 404);
    let api_with = Api { http: server.http(), url: admin.url.clone(), token: token.clone() };
    let r = api_with.get(&format!("/api/v1/machines/{id}")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.to_string().contains("metadata token"), "{}", r.body);

    // Another machine's token gives that machine's data, never this one's.
    let seed2 = common::cli_json(&server, &["machines", "metadata-token", &other_id]);
    let (_, meta2) = get(&format!("{}meta-data", seed2["seed_url"].as_str().unwrap())).await;
    assert!(meta2.contains(&other_id) && !meta2.contains(&id) && !meta2.contains("web-one"), "{meta2}");
    // No token, a made-up one, or none in the path: nothing.
    for path in ["/t/plt_nope.nope/meta-data", "/t//meta-data", "/meta-data", "/machines/52-54-00-0d-00-01/meta-data"] {
        let (status, body) = get(&format!("http://{http}{path}")).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("web-one"), "{path}: {body}");
    }
    // Rotation: a new token revokes the old one.
    let rotated = common::cli_json(&server, &["machines", "metadata-token", &id]);
    assert_eq!(get(&format!("{url}meta-data")).await.0, 404, "the old token is revoked");
    let url = rotated["seed_url"].as_str().unwrap().to_owned();
    assert_eq!(get(&format!("{url}meta-data")).await.0, 200);
    // Expiry: the same token, past its end, reads nothing.
    let token_id = rotated["token"].as_str().unwrap().trim_start_matches("plt_").split('.').next().unwrap().to_owned();
    let db = dir.path().join("plinth.db");
    let sql = format!(
        "UPDATE objects SET body = json_set(body, '$.expires_at', '2020-01-01T00:00:00Z') WHERE kind = 'tokens' AND key = '{token_id}'"
    );
    ok(std::process::Command::new("sqlite3").arg(&db).arg(&sql).output().unwrap());
    assert_eq!(get(&format!("{url}meta-data")).await.0, 404, "an expired token reads nothing");
    // Each read is on the machine's timeline.
    let timeline = common::cli_json(&server, &["machines", "timeline", &id]);
    assert!(
        timeline
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["service"] == "metadata" && e["detail"].as_str().unwrap().contains("served user-data")),
        "{timeline}"
    );
    // Minting one needs the claim to read the machine's secrets: a token
    // that may do anything to machines but that cannot.
    let r = server
        .http()
        .post(format!("{}/api/v1/auth/token", server.url))
        .basic_auth("admin", Some(common::PASSWORD))
        .json(&json!({"claims": [{"kind": "machines", "action": "*"}]}))
        .send()
        .await
        .unwrap();
    let machines_only: Value = r.json().await.unwrap();
    let ops =
        Api { http: server.http(), url: admin.url.clone(), token: machines_only["token"].as_str().unwrap().into() };
    let r = ops.post(&format!("/api/v1/machines/{id}/metadata-token"), json!({})).await;
    assert_eq!(r.status, 403, "{}", r.body);

    // The image-deploy task, as the machine's agent gets it: the image and
    // a real metadata token; as an operator reads it: a placeholder.
    let boot = boot_credential(&server, "52-54-00-0d-00-01").await;
    let session = server.session(&id, &boot).await;
    let agent = Api { http: server.http(), url: admin.url.clone(), token: session };
    ok(server.cli(&["machines", "workflow", &id, "image-deploy", "-o", "json"], Some(&admin.token)));
    let n = post(&agent, &format!("/api/v1/machines/{id}/next"), json!({"boot_id": "b1"})).await;
    assert_eq!(n["job"]["task"], "image-deploy", "{n}");
    let job = n["job"]["id"].as_str().unwrap().to_owned();
    let files = agent.get(&format!("/api/v1/jobs/{job}/files")).await;
    assert_eq!(files.status, 200, "{}", files.body);
    let script = files.body[0]["contents"].as_str().unwrap().to_owned();
    assert!(script.contains(&format!("--url 'http://{http}/files/images/deb.raw.zst'")), "{script}");
    assert!(
        script.contains(&format!("--sha256 '{}'", "ab".repeat(32))) && script.contains("--raw-size 4000"),
        "{script}"
    );
    let seed_line = script.lines().find(|l| l.starts_with("export PLINTH_SEED_URL=")).unwrap();
    let seed_url = seed_line.trim_start_matches("export PLINTH_SEED_URL=").trim_matches('\'').to_owned();
    assert!(seed_url.contains("/t/plt_"), "{seed_line}");
    assert_eq!(get(&format!("{seed_url}meta-data")).await.0, 200, "the deploy's token reads the metadata");
    assert_eq!(get(&format!("{url}meta-data")).await.0, 404, "and revoked the one before it");
    let as_operator = admin.get(&format!("/api/v1/jobs/{job}/files")).await;
    let text = as_operator.body[0]["contents"].as_str().unwrap();
    assert!(text.contains("/t/<metadata-token>/"), "{text}");
}
