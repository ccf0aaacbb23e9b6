//! `plinth content …`: content packs, locally (validate, bundle, unbundle)
//! and on the server (plan, install, export, rollback, promote, remove).

use crate::objects::encode_key;
use crate::output::{self, Format};
use crate::session::client;
use crate::{ClientError, config};
use clap::ArgMatches;
use reqwest::Method;
use serde_json::Value;

/// Writes `pack` out as a directory and says so.
fn write_pack(pack: &plinth_content::pack::Pack, dir: &str, what: &str) -> Result<String, ClientError> {
    pack.write_dir(std::path::Path::new(dir)).map_err(|e| ClientError::Local(format!("cannot write {dir}: {e}")))?;
    Ok(format!(
        "wrote {what}{} {} ({} objects) to {dir}\n",
        pack.manifest.name,
        pack.manifest.version,
        pack.objects.len()
    ))
}

/// Reads a pack from a directory or a bundle file; every problem listed.
fn load_pack(src: &str) -> Result<plinth_content::pack::Pack, ClientError> {
    let path = std::path::Path::new(src);
    let loaded = if path.is_dir() {
        plinth_content::pack::load_dir(path)
    } else {
        let bytes = std::fs::read(path).map_err(|e| ClientError::Input(format!("cannot read {src}: {e}")))?;
        plinth_content::pack::Pack::from_bytes(&bytes)
    };
    loaded.map_err(|e| ClientError::Input(e.to_string()))
}

/// A plan for people: what changes, then the errors.
fn plan_text(plan: &Value, diffs: bool) -> String {
    let mut out = format!(
        "pack {}: {} -> {}\n",
        plan["pack"].as_str().unwrap_or_default(),
        plan["from"].as_str().unwrap_or("(not installed)"),
        plan["to"].as_str().unwrap_or("(removed)")
    );
    for o in plan["objects"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<14} {} {}\n",
            o["change"].as_str().unwrap_or_default(),
            o["kind"].as_str().unwrap_or_default(),
            o["key"].as_str().unwrap_or_default()
        ));
    }
    let machines = plan["machines"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!(
        "machines: {} checked, {} change, {} kept on another version\n",
        plan["machines_checked"],
        machines.len(),
        plan["pinned"]
    ));
    for m in &machines {
        let files: Vec<&str> = m["files"].as_array().into_iter().flatten().filter_map(|f| f["file"].as_str()).collect();
        out.push_str(&format!(
            "  {} ({}){}: {}\n",
            m["name"].as_str().unwrap_or_default(),
            m["id"].as_str().unwrap_or_default(),
            if m["workflow_affected"] == true { " [running workflow changes]" } else { "" },
            files.join(", ")
        ));
        if diffs {
            for f in m["files"].as_array().into_iter().flatten() {
                out.push_str(f["diff"].as_str().unwrap_or_default());
            }
        }
    }
    for w in plan["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("warning: {}\n", w.as_str().unwrap_or_default()));
    }
    for e in plan["errors"].as_array().into_iter().flatten() {
        out.push_str(&format!("error: {}\n", e.as_str().unwrap_or_default()));
    }
    out
}

pub(crate) async fn content(
    action: &str,
    m: &ArgMatches,
    global: &ArgMatches,
    cfg: &config::Config,
    format: Format,
) -> Result<String, ClientError> {
    let arg = |n: &str| m.get_one::<String>(n).cloned().unwrap_or_default();
    let force =
        if m.try_get_one::<bool>("force").ok().flatten().copied().unwrap_or(false) { "?force=true" } else { "" };
    let show = |reply: Value, diffs: bool| match format {
        Format::Table => plan_text(&reply, diffs),
        other => output::one(&reply, other),
    };
    match action {
        "bundle" => {
            let pack = load_pack(&arg("dir"))?;
            let text =
                serde_json::to_string_pretty(&pack.to_bundle()).map_err(|e| ClientError::Local(e.to_string()))? + "\n";
            match m.get_one::<String>("out") {
                Some(out) => {
                    std::fs::write(out, text).map_err(|e| ClientError::Local(format!("cannot write {out}: {e}")))?;
                    Ok(format!(
                        "bundled {} {} ({} objects) into {out}\n",
                        pack.manifest.name,
                        pack.manifest.version,
                        pack.objects.len()
                    ))
                }
                None => Ok(text),
            }
        }
        "unbundle" => write_pack(&load_pack(&arg("bundle"))?, &arg("dir"), ""),
        "validate" => {
            let pack = load_pack(&arg("pack"))?;
            Ok(format!(
                "{} {}: {} objects, no problems\n",
                pack.manifest.name,
                pack.manifest.version,
                pack.objects.len()
            ))
        }
        "plan" | "install" => {
            let pack = load_pack(&arg("pack"))?;
            let c = client(global, cfg, true)?;
            let mut path = if action == "plan" {
                "/api/v1/contents/plan".to_owned()
            } else {
                format!("/api/v1/contents/install{force}")
            };
            if let Some(c) = m.get_one::<String>("canary") {
                path.push(if path.contains('?') { '&' } else { '?' });
                path.push_str(&format!("canary={}", encode_key(c)));
            }
            let reply = c.call(Method::POST, &path, Some(&pack.to_bundle()), None).await?;
            let diffs = m.try_get_one::<bool>("diffs").ok().flatten().copied().unwrap_or(false);
            Ok(show(reply.body, diffs))
        }
        "export" => {
            let c = client(global, cfg, true)?;
            let path = format!(
                "/api/v1/contents/export?name={}&version={}",
                encode_key(&arg("name")),
                encode_key(&arg("pack-version"))
            );
            let reply = c.call(Method::GET, &path, None, None).await?;
            let pack =
                plinth_content::pack::Pack::from_bundle(&reply.body).map_err(|e| ClientError::Local(e.to_string()))?;
            write_pack(&pack, &arg("dir"), "the site layer as ")
        }
        "rollback" | "promote" => {
            let c = client(global, cfg, true)?;
            let path = format!("/api/v1/contents/{}/{action}{force}", encode_key(&arg("name")));
            let reply = c.call(Method::POST, &path, None, None).await?;
            Ok(show(reply.body, false))
        }
        "remove" => {
            let c = client(global, cfg, true)?;
            let reply = c
                .call(Method::DELETE, &format!("/api/v1/contents/{}{force}", encode_key(&arg("name"))), None, None)
                .await?;
            Ok(show(reply.body, false))
        }
        other => Err(ClientError::Input(format!("unknown content action `{other}`"))),
    }
}
