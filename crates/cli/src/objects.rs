//! `plinth <kind> list|show|create|update|patch|delete|…`: the generic
//! object commands and the bodies they send.

use crate::output::{self, Format};
use crate::{Client, ClientError};
use clap::ArgMatches;
use plinth_model::Kind;
use reqwest::Method;
use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;

fn read_body(m: &ArgMatches) -> Result<Value, ClientError> {
    let (text, source) = if let Some(d) = m.get_one::<String>("data") {
        (d.clone(), "--data".to_owned())
    } else if let Some(p) = m.get_one::<PathBuf>("file") {
        if p.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(|e| ClientError::Input(format!("standard input: {e}")))?;
            (s, "standard input".to_owned())
        } else {
            let s = std::fs::read_to_string(p).map_err(|e| ClientError::Input(format!("{}: {e}", p.display())))?;
            (s, p.display().to_string())
        }
    } else {
        return Err(ClientError::Input("give the object with -f FILE (JSON or YAML) or --data JSON".into()));
    };
    match serde_json::from_str(&text) {
        Ok(v) => Ok(v),
        Err(json_err) => serde_yaml_ng::from_str::<Value>(&text)
            .map_err(|_| ClientError::Input(format!("{source} is neither JSON nor YAML: {json_err}"))),
    }
}

pub(crate) fn encode_key(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub(crate) async fn object_command(
    c: &Client,
    kind: Kind,
    action: &str,
    m: &ArgMatches,
    format: Format,
) -> Result<String, ClientError> {
    let base = format!("/api/v1/{}", kind.plural());
    let key_path = || m.get_one::<String>("key").map(|k| format!("{base}/{}", encode_key(k))).unwrap_or_default();
    let if_match = || m.try_get_one::<u64>("if-match").ok().flatten().copied();
    match action {
        "list" => {
            let mut params: Vec<String> = Vec::new();
            for f in m.get_many::<String>("filter").into_iter().flatten() {
                let (k, v) =
                    f.split_once('=').ok_or_else(|| ClientError::Input(format!("filter `{f}` is not FIELD=VALUE")))?;
                params.push(format!("{}={}", encode_key(k), encode_key(v)));
            }
            let want = m.get_one::<usize>("limit").copied();
            let mut items = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = want.map_or(1000, |w| (w - items.len()).clamp(1, 1000));
                let mut q = params.clone();
                q.push(format!("limit={page}"));
                if let Some(a) = &after {
                    q.push(format!("after={}", encode_key(a)));
                }
                let reply = c.call(Method::GET, &format!("{base}?{}", q.join("&")), None, None).await?;
                if let Some(Value::Array(batch)) = reply.body.get("items") {
                    items.extend(batch.iter().cloned());
                }
                after = reply.body.get("next").and_then(Value::as_str).map(str::to_owned);
                if after.is_none() || want.is_some_and(|w| items.len() >= w) {
                    break;
                }
            }
            Ok(output::list(kind, &items, format))
        }
        "show" => Ok(output::one(&c.call(Method::GET, &key_path(), None, None).await?.body, format)),
        "params" => {
            let explain = m.get_flag("explain");
            let path = format!("{}/params{}", key_path(), if explain { "?explain=true" } else { "" });
            let body = c.call(Method::GET, &path, None, None).await?.body;
            Ok(match (format, explain) {
                (Format::Table, true) => {
                    let rows: Vec<Value> = body
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(name, r)| {
                            let shadows: Vec<String> = r["shadows"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|s| format!("{}={}", output::layer(&s["source"]), output::cell(&s["value"])))
                                .collect();
                            serde_json::json!({"name": name, "value": r["value"], "source": output::layer(&r["source"]), "shadows": shadows.join("; ")})
                        })
                        .collect();
                    output::table(&["name", "value", "source", "shadows"], &rows)
                }
                (Format::Table, false) => {
                    let rows: Vec<Value> = body
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(n, v)| serde_json::json!({"name": n, "value": v}))
                        .collect();
                    output::table(&["name", "value"], &rows)
                }
                (other, _) => output::one(&body, other),
            })
        }
        "create" => Ok(output::one(&c.call(Method::POST, &base, Some(&read_body(m)?), None).await?.body, format)),
        "update" | "patch" => {
            let method = if action == "update" { Method::PUT } else { Method::PATCH };
            let overriding = m.try_get_one::<bool>("override").ok().flatten().copied().unwrap_or(false);
            let path = if overriding { format!("{}?override=true", key_path()) } else { key_path() };
            Ok(output::one(&c.call(method, &path, Some(&read_body(m)?), if_match()).await?.body, format))
        }
        "delete" => {
            c.call(Method::DELETE, &key_path(), None, if_match()).await?;
            Ok(format!(
                "deleted {} {}\n",
                kind.plural(),
                m.get_one::<String>("key").map(String::as_str).unwrap_or_default()
            ))
        }
        "import-iso" => crate::iso::import_iso(c, m).await,
        "import" => crate::images::import(c, m).await,
        "metadata-token" => {
            let reply = c.call(Method::POST, &format!("{}/metadata-token", key_path()), None, None).await?;
            Ok(output::one(&reply.body, format))
        }
        "power" | "boot-once" | "rebuild" | "boot-media" | "bmc" | "enroll" => {
            crate::power::command(c, action, m, format).await
        }
        "workflow" => {
            let wf = m.get_one::<String>("workflow").cloned().unwrap_or_default();
            let body = serde_json::json!({"workflow": wf});
            Ok(output::one(
                &c.call(Method::POST, &format!("{}/workflow", key_path()), Some(&body), None).await?.body,
                format,
            ))
        }
        action @ ("resume" | "accept" | "reject") => {
            Ok(output::one(&c.call(Method::POST, &format!("{}/{action}", key_path()), None, None).await?.body, format))
        }
        "log" => c.text(&format!("{}/log", key_path())).await,
        "timeline" => {
            let reply = c.call(Method::GET, &format!("{}/timeline", key_path()), None, None).await?;
            let items = reply.body.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            Ok(match format {
                Format::Table => output::table(&["at", "service", "mac", "address", "detail"], &items),
                other => output::one(&Value::Array(items), other),
            })
        }
        other => Err(ClientError::Input(format!("unknown action `{other}`"))),
    }
}
