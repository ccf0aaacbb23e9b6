//! `plinth users reset-password NAME`: the way back in, on the server's
//! host, without the API: a new password for a user, every token of that
//! user revoked, in one audited write to the store.

use anyhow::{Context, Result};
use plinth_model::Kind;
use plinth_store::{Expect, Filter, Store, StoreExt, WriteOp};
use std::path::PathBuf;

/// Resets the password of the user `m` names; returns what to print.
pub fn reset_password(runtime: &tokio::runtime::Runtime, m: &clap::ArgMatches) -> Result<String> {
    let name = m.get_one::<String>("key").cloned().unwrap_or_default();
    let dir = m.get_one::<PathBuf>("data-dir").cloned().unwrap_or_else(|| PathBuf::from("./plinth-data"));
    let db = dir.join("plinth.db");
    if !db.exists() {
        anyhow::bail!("no store at {} (pass the server's --data-dir)", db.display());
    }
    let (password, shown) = match m.get_one::<PathBuf>("password-file") {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            (text.lines().next().unwrap_or_default().to_owned(), false)
        }
        None => (plinth_api::random_secret(18), true),
    };
    if password.chars().count() < 8 {
        anyhow::bail!("the new password must have at least 8 characters");
    }
    let hash = plinth_api::hash_password(&password).map_err(|e| anyhow::anyhow!("{e}"))?;
    let revoked = runtime.block_on(async {
        let store = plinth_store::SqliteStore::open(&db)?;
        let Some(user) = store.get(Kind::User, &name).await? else {
            anyhow::bail!("no user `{name}` in {}", db.display());
        };
        let mut body = user.body;
        body["password_hash"] = serde_json::Value::String(hash);
        let mut ops =
            vec![WriteOp::Put { kind: Kind::User, key: name.clone(), body, expect: Expect::Revision(user.revision) }];
        let filter = Filter { path: vec!["user".into()], value: serde_json::Value::String(name.clone()) };
        let tokens = store.list_all(Kind::Token, vec![filter]).await?;
        let revoked = tokens.len();
        ops.extend(tokens.into_iter().map(|t| WriteOp::Delete { kind: Kind::Token, key: t.key, expect: Expect::Any }));
        let actor = format!("host:{}", std::env::var("USER").unwrap_or_else(|_| "root".into()));
        store.apply_audited(ops, actor).await?;
        Ok::<_, anyhow::Error>(revoked)
    })?;
    let mut out = format!("user `{name}`: new password set; {revoked} token(s) revoked\n");
    if shown {
        out.push_str(&format!("password: {password}\n"));
    }
    Ok(out)
}
