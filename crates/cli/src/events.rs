//! Watching: the change stream, boot events and the audit log.

use crate::objects::encode_key;
use crate::output::{self, Format};
use crate::session::client;
use crate::{Client, ClientError, config};
use clap::ArgMatches;
use reqwest::Method;
use serde_json::Value;
use std::io::Write;

async fn follow_events(c: &Client, query: &str, count: Option<u64>) -> Result<String, ClientError> {
    use futures_util::StreamExt;
    let resp = c.events(query).await?;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut seen = 0u64;
    let mut event = String::new();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ClientError::Connect { endpoint: c.endpoint().into(), message: e.to_string() })?;
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(pos) = buf.find('\n') {
            let line: String = buf.drain(..=pos).collect();
            if let Some(name) = line.trim_end().strip_prefix("event:") {
                event = name.trim().to_owned();
            }
            // `ready` says the subscription is live; it is no change.
            if let Some(data) = line.trim_end().strip_prefix("data:")
                && event != "ready"
            {
                let _ = writeln!(stdout, "{}", data.trim_start());
                let _ = stdout.flush();
                seen += 1;
                if count.is_some_and(|n| seen >= n) {
                    return Ok(String::new());
                }
            }
        }
    }
    Ok(String::new())
}

/// `plinth events`: follows the change stream.
pub(crate) async fn events(sub: &ArgMatches, global: &ArgMatches, cfg: &config::Config) -> Result<String, ClientError> {
    let c = client(global, cfg, true)?;
    let mut q = Vec::new();
    if let Some(k) = sub.get_one::<String>("kind") {
        q.push(format!("kind={}", encode_key(k)));
    }
    if let Some(k) = sub.get_one::<String>("key") {
        q.push(format!("key={}", encode_key(k)));
    }
    let query = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
    follow_events(&c, &query, sub.get_one::<u64>("count").copied()).await
}

/// `plinth boot-events`.
pub(crate) async fn boot_events(
    sub: &ArgMatches,
    global: &ArgMatches,
    cfg: &config::Config,
    format: Format,
) -> Result<String, ClientError> {
    let c = client(global, cfg, true)?;
    let mut q = vec![format!("limit={}", sub.get_one::<usize>("limit").copied().unwrap_or(1000))];
    if let Some(m) = sub.get_one::<String>("mac") {
        q.push(format!("mac={}", encode_key(m)));
    }
    let reply = c.call(Method::GET, &format!("/api/v1/boot-events?{}", q.join("&")), None, None).await?;
    let items = reply.body.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
    Ok(match format {
        Format::Table => output::table(&["id", "at", "mac", "address", "service", "detail"], &items),
        other => output::one(&Value::Array(items), other),
    })
}

/// `plinth audit`.
pub(crate) async fn audit(
    sub: &ArgMatches,
    global: &ArgMatches,
    cfg: &config::Config,
    format: Format,
) -> Result<String, ClientError> {
    let c = client(global, cfg, true)?;
    let mut q = vec![format!("limit={}", sub.get_one::<usize>("limit").copied().unwrap_or(1000))];
    for name in ["kind", "key", "actor"] {
        if let Some(v) = sub.get_one::<String>(name) {
            q.push(format!("{name}={}", encode_key(v)));
        }
    }
    if let Some(a) = sub.get_one::<u64>("after") {
        q.push(format!("after={a}"));
    }
    let reply = c.call(Method::GET, &format!("/api/v1/audit?{}", q.join("&")), None, None).await?;
    let items = reply.body.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
    Ok(match format {
        Format::Table => output::table(&["seq", "at", "actor", "action", "kind", "key", "detail"], &items),
        other => output::one(&Value::Array(items), other),
    })
}
