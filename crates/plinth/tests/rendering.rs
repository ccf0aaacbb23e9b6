//! Rendering through a running server: the built-in content installed on
//! first start, arch/firmware variants chosen by what the client says, the
//! iPXE script for unknown machines, and the machine token a boot file may
//! carry (scoped to its machine; never issued by a debugging render).

mod common;

use common::{Api, Server};
use serde_json::{Value, json};

async fn fetch(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn created(api: &Api, path: &str, body: Value) -> Value {
    let r = api.post(path, body).await;
    assert_eq!(r.status, 201, "{path}: {}", r.body);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_content_renders_per_machine_with_variants_and_scoped_tokens() {
    let server = Server::start();
    let api = server.api().await;
    let http = format!("http://{}", server.addr("http"));

    // First start installed the built-in bootenvs, templates and params.
    for (kind, key) in
        [("bootenvs", "local"), ("bootenvs", "rocky-9"), ("templates", "preseed"), ("params", "packages")]
    {
        assert_eq!(api.get(&format!("/api/v1/{kind}/{key}")).await.status, 200, "{kind}/{key}");
    }

    let web = created(
        &api,
        "/api/v1/machines",
        json!({"name": "web-7", "macs": ["52:54:00:07:00:01"], "bootenv": "rocky-9"}),
    )
    .await;
    let other = created(&api, "/api/v1/machines", json!({"name": "web-8", "macs": ["52:54:00:07:00:02"]})).await;
    let web_id = web["id"].as_str().unwrap();

    // The variant follows what iPXE says it runs as.
    let (st, x86) = fetch(&format!("{http}/ipxe/52-54-00-07-00-01?platform=efi&buildarch=x86_64")).await;
    assert_eq!(st, 200);
    assert!(x86.contains("/files/rocky-9/images/pxeboot/vmlinuz") && x86.contains("for amd64/uefi"), "{x86}");
    let (_, arm) = fetch(&format!("{http}/ipxe/52-54-00-07-00-01?platform=efi&buildarch=arm64")).await;
    assert!(arm.contains("/files/rocky-9-aarch64/images/pxeboot/vmlinuz") && arm.contains("for arm64/uefi"), "{arm}");
    let (_, bios) = fetch(&format!("{http}/ipxe/52-54-00-07-00-01?platform=pcbios&buildarch=i386")).await;
    assert!(bios.contains("for amd64/bios"), "{bios}");

    // The kickstart names the API the client can reach, and renders the
    // install tree URL from the bootenv.
    let (st, ks) = fetch(&format!("{http}/machines/52-54-00-07-00-01/kickstart.cfg")).await;
    assert_eq!(st, 200, "{ks}");
    assert!(ks.contains(&format!("url --url={http}/files/rocky-9/")), "{ks}");

    // The post-install script carries a machine token, minted for this
    // fetch; it reads its own machine and nothing else.
    let (st, post) = fetch(&format!("{http}/machines/52-54-00-07-00-01/post-install.sh")).await;
    assert_eq!(st, 200);
    let endpoint = post.lines().find_map(|l| l.strip_prefix("PLINTH_ENDPOINT=")).unwrap();
    assert_eq!(endpoint, format!("https://127.0.0.1:{}", server.addr("api").rsplit(':').next().unwrap()));
    let token = post.lines().find_map(|l| l.strip_prefix("PLINTH_TOKEN=")).unwrap().to_owned();
    // The agent is given the CA the API's certificate chains to.
    let ca = std::fs::read_to_string(server.ca()).unwrap();
    assert!(post.contains("PLINTH_CA_CERT=/etc/plinth/ca.pem") && post.contains(ca.trim()), "{post}");
    assert!(token.starts_with("plt_"), "{post}");
    // It is a boot credential: good only for one trade for a session.
    let as_boot = Api { http: server.http(), url: api.url.clone(), token: token.clone() };
    assert_eq!(as_boot.get(&format!("/api/v1/machines/{web_id}")).await.status, 403);
    let token = server.session(web_id, &token).await;
    let as_machine = Api { http: server.http(), url: api.url.clone(), token };
    let own = as_machine.get(&format!("/api/v1/machines/{web_id}")).await;
    assert_eq!((own.status, own.body["name"].as_str()), (200, Some("web-7")));
    assert_eq!(as_machine.get(&format!("/api/v1/machines/{web_id}/params")).await.status, 200);
    for path in [
        format!("/api/v1/machines/{}", other["id"].as_str().unwrap()),
        format!("/api/v1/machines/{}/params", other["id"].as_str().unwrap()),
        "/api/v1/machines".to_owned(),
        "/api/v1/tokens".to_owned(),
        "/api/v1/users".to_owned(),
        "/api/v1/events".to_owned(),
    ] {
        assert_eq!(as_machine.get(&path).await.status, 403, "{path}");
    }
    let r = as_machine
        .send(reqwest::Method::PATCH, &format!("/api/v1/machines/{web_id}"), Some(json!({"bootenv": "local"})), None)
        .await;
    assert_eq!(r.status, 403, "a machine token cannot write, even its own machine, yet");
    let r = as_machine.post("/api/v1/machines", json!({"name": "evil"})).await;
    assert_eq!(r.status, 403);
    let tokens = api.get("/api/v1/tokens").await.body["items"].as_array().unwrap().clone();
    let machine_tokens: Vec<&Value> = tokens.iter().filter(|t| t["machine"] == web_id).collect();
    // The boot credential (traded) and the session it was traded for.
    assert_eq!(machine_tokens.len(), 2, "{tokens:?}");
    assert!(machine_tokens.iter().any(|t| t["boot"] == true && t["uses_left"] == 0), "{tokens:?}");
    assert!(machine_tokens.iter().all(|t| t.get("secret_hash").is_none()));

    // A debugging render never issues one.
    let r = api.post("/api/v1/render", json!({"machine": web_id, "bootenv_file": "post-install.sh"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["output"].as_str().unwrap().contains("PLINTH_TOKEN=<machine-token>"), "{}", r.body);
    let r = api
        .post("/api/v1/render", json!({"machine": web_id, "bootenv_file": "ipxe", "arch": "arm64", "firmware": "uefi"}))
        .await;
    assert!(r.body["output"].as_str().unwrap().contains("rocky-9-aarch64"), "{}", r.body);
    let after = api.get("/api/v1/tokens").await.body["items"].as_array().unwrap().len();
    assert_eq!(after, tokens.len(), "rendering through the API created a token");

    // Deleting the machine ends its token.
    assert_eq!(api.send(reqwest::Method::DELETE, &format!("/api/v1/machines/{web_id}"), None, None).await.status, 200);
    assert_eq!(as_machine.get(&format!("/api/v1/machines/{web_id}")).await.status, 401);

    // Unknown machines get the built-in discovery script (no file-root
    // default.ipxe here), naming the API and the MAC.
    let (st, unknown) = fetch(&format!("{http}/ipxe/52-54-00-07-00-99")).await;
    assert_eq!(st, 200);
    assert!(unknown.starts_with("#!ipxe") && unknown.contains("52:54:00:07:00:99"), "{unknown}");
    assert!(unknown.contains("/files/${plinth_dir}/vmlinuz") && unknown.contains("plinth.api=https://"), "{unknown}");
    assert!(unknown.contains("iseq ${buildarch} arm64 && set plinth_dir discovery/arm64"), "by CPU: {unknown}");

    // A site overrides a shipped template (the default pack's) explicitly;
    // the next render uses it.
    let mut local = api.get("/api/v1/templates/ipxe-local").await.body;
    local["contents"] = json!("#!ipxe\necho site-local\nexit\n");
    assert_eq!(
        api.send(reqwest::Method::PUT, "/api/v1/templates/ipxe-local", Some(local.clone()), None).await.status,
        409
    );
    let r = api.send(reqwest::Method::PUT, "/api/v1/templates/ipxe-local?override=true", Some(local), None).await;
    assert_eq!((r.status, r.body["meta"]["override"].as_str()), (200, Some("plinth-default")), "{}", r.body);
    let r = api
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/machines/{}", other["id"].as_str().unwrap()),
            Some(json!({"bootenv": "local"})),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let (_, script) = fetch(&format!("{http}/ipxe/52-54-00-07-00-02")).await;
    assert!(script.contains("echo site-local"), "{script}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_params_and_secure_values_stay_where_they_belong() {
    let server = Server::start();
    let api = server.api().await;
    let http = format!("http://{}", server.addr("http"));
    created(&api, "/api/v1/params", json!({"name": "rack", "schema": {"type": "string"}})).await;
    created(&api, "/api/v1/params", json!({"name": "bmc-password", "schema": {"type": "string"}, "secure": true}))
        .await;
    created(&api, "/api/v1/bootenvs", json!({"name": "needs-rack", "required_params": ["rack"],
        "templates": [{"name": "ipxe", "contents": "#!ipxe\necho rack {{ param('rack') }}\n"},
                      {"name": "dump", "path": "dump.txt", "contents": "{{ params | tojson }} {{ param('bmc-password', 'absent') }}"}]}))
    .await;
    let a = created(
        &api,
        "/api/v1/machines",
        json!({"name": "a", "macs": ["52:54:00:08:00:01"], "bootenv": "needs-rack",
        "params": {"bmc-password": "hunter2-of-a"}}),
    )
    .await;
    let b = created(
        &api,
        "/api/v1/machines",
        json!({"name": "b", "macs": ["52:54:00:08:00:02"], "bootenv": "needs-rack",
        "params": {"rack": "r7"}}),
    )
    .await;

    // A required param with no value: no boot file, and /render says why.
    let (st, _) = fetch(&format!("{http}/ipxe/52-54-00-08-00-01")).await;
    assert_ne!(st, 200);
    let r = api.post("/api/v1/render", json!({"machine": a["id"], "bootenv_file": "ipxe"})).await;
    assert_eq!(r.status, 400);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains("requires param `rack`") && detail.contains("machine `a`"), "{detail}");
    let (st, script) = fetch(&format!("{http}/ipxe/52-54-00-08-00-02")).await;
    assert_eq!((st, script.as_str()), (200, "#!ipxe\necho rack r7"));

    // A secure value is in no render: not its own machine's debugging
    // render, and never another machine's file.
    for (machine, mac) in [(&a, "52-54-00-08-00-01"), (&b, "52-54-00-08-00-02")] {
        let r = api
            .post("/api/v1/render", json!({"machine": machine["id"], "contents": "{{ params | tojson }} {{ param('bmc-password', 'absent') }}"}))
            .await;
        let out = r.body["output"].as_str().unwrap();
        assert!(!out.contains("hunter2") && out.ends_with("absent"), "{out}");
        let (_, dumped) = fetch(&format!("{http}/machines/{mac}/dump.txt")).await;
        assert!(!dumped.contains("hunter2"), "{dumped}");
    }
}
