//! Credentials: the endpoint and token a command uses, `plinth login`,
//! `plinth logout` and join tokens.

use crate::output::{self, Format};
use crate::{Client, ClientError, config};
use clap::ArgMatches;
use reqwest::Method;
use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;

pub(crate) fn client(global: &ArgMatches, cfg: &config::Config, need_token: bool) -> Result<Client, ClientError> {
    let endpoint = global.get_one::<String>("endpoint").cloned().or_else(|| cfg.endpoint.clone()).ok_or_else(|| {
        ClientError::Input(
            "no endpoint: pass --endpoint, set PLINTH_ENDPOINT, or run `plinth login --endpoint URL`".into(),
        )
    })?;
    let token = global.get_one::<String>("token").cloned().or_else(|| cfg.token.clone());
    if need_token && token.is_none() {
        return Err(ClientError::Input("not logged in: run `plinth login`, or pass --token / set PLINTH_TOKEN".into()));
    }
    let ca = global.get_one::<PathBuf>("ca-cert").cloned().or_else(|| cfg.ca_cert.clone());
    Client::new(&endpoint, token, ca.as_deref(), global.get_flag("allow-http"))
}

pub(crate) async fn login(
    sub: &ArgMatches,
    global: &ArgMatches,
    mut cfg: config::Config,
) -> Result<String, ClientError> {
    let username = sub.get_one::<String>("username").cloned().unwrap_or_else(|| "admin".into());
    let password = if let Some(p) = sub.get_one::<PathBuf>("password-file") {
        std::fs::read_to_string(p).map_err(|e| ClientError::Input(format!("{}: {e}", p.display())))?
    } else if sub.get_flag("password-stdin") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| ClientError::Input(format!("standard input: {e}")))?;
        s
    } else if let Ok(p) = std::env::var("PLINTH_PASSWORD") {
        p
    } else {
        return Err(ClientError::Input(
            "give the password with --password-file FILE, --password-stdin or PLINTH_PASSWORD".into(),
        ));
    };
    let password = password.trim_end_matches(['\n', '\r']);
    if let Some(ca) = global.get_one::<PathBuf>("ca-cert") {
        cfg.ca_cert = Some(std::path::absolute(ca).map_err(|e| ClientError::Input(format!("{}: {e}", ca.display())))?);
    }
    if let Some(e) = global.get_one::<String>("endpoint") {
        cfg.endpoint = Some(e.clone());
    }
    cfg.token = None;
    let c = client(global, &cfg, false)?;
    let reply = c.login(&username, password, sub.get_one::<u64>("ttl").copied()).await?;
    let token = reply
        .get("token")
        .and_then(Value::as_str)
        .ok_or_else(|| ClientError::Input("the server sent no token".into()))?;
    cfg.token = Some(token.to_owned());
    cfg.endpoint = Some(c.endpoint().to_owned());
    let path = config::save(&cfg)?;
    let expires = reply.get("expires_at").and_then(Value::as_str).unwrap_or("?");
    Ok(format!("logged in to {} as {username}; token saved to {} (expires {expires})\n", c.endpoint(), path.display()))
}

/// `plinth logout`: revokes the token in use and forgets it.
pub(crate) async fn logout(global: &ArgMatches, cfg: config::Config) -> Result<String, ClientError> {
    let c = client(global, &cfg, true)?;
    let token = global.get_one::<String>("token").cloned().or_else(|| cfg.token.clone()).unwrap_or_default();
    if let Some((id, _)) = plinth_model::Token::parse_bearer(&token) {
        c.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None, None).await?;
    }
    let mut cfg = cfg;
    cfg.token = None;
    config::save(&cfg)?;
    Ok("logged out\n".into())
}

/// `plinth join-tokens create`.
pub(crate) async fn join_tokens(
    sub: &ArgMatches,
    global: &ArgMatches,
    cfg: &config::Config,
    format: Format,
) -> Result<String, ClientError> {
    let c = client(global, cfg, true)?;
    let m = sub.subcommand_matches("create").ok_or_else(|| ClientError::Input("which action?".into()))?;
    let profiles: Vec<&String> = m.get_many::<String>("profile").into_iter().flatten().collect();
    let body = serde_json::json!({
        "uses": m.get_one::<u32>("uses"),
        "ttl_secs": m.get_one::<u64>("ttl"),
        "workflow": m.get_one::<String>("workflow"),
        "profiles": profiles,
        "description": m.get_one::<String>("description"),
    });
    let reply = c.call(Method::POST, "/api/v1/join-tokens", Some(&body), None).await?;
    Ok(match format {
        Format::Table => format!("{}\n", reply.body["token"].as_str().unwrap_or_default()),
        other => output::one(&reply.body, other),
    })
}
