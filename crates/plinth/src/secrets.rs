//! `plinth secrets rotate|prune`: the keyring that seals secure values,
//! edited in the data dir (the server re-seals at its next start).

use std::path::PathBuf;

/// `plinth secrets rotate|prune`: edits the keyring file in place.
pub fn run(runtime: &tokio::runtime::Runtime, action: &str, m: &clap::ArgMatches) -> anyhow::Result<String> {
    use anyhow::Context;
    let dir = m.get_one::<PathBuf>("data-dir").cloned().unwrap_or_else(|| PathBuf::from("./plinth-data"));
    let path = dir.join(crate::serve::KEYRING_FILE);
    if std::env::var(plinth_secrets::KEYS_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        anyhow::bail!("the keys come from {}; rotate them where that value is kept", plinth_secrets::KEYS_ENV);
    }
    // Loading checks the file (mode, format) before it is changed.
    let before = plinth_secrets::Keyring::load_or_create(&path).context("cannot load the keyring")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if action == "prune" {
        let db = dir.join("plinth.db");
        let old = runtime.block_on(async {
            let store = plinth_store::SqliteStore::open(&db)?;
            plinth_api::sealed_under_old_keys(&store, &before).await
        })?;
        if old > 0 {
            anyhow::bail!(
                "{old} secure values are still sealed under an older key; restart the server (it re-seals them), then prune"
            );
        }
    }
    let new = match action {
        "rotate" => plinth_secrets::rotated(&text)?,
        _ => format!(
            "{}\n",
            text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or_default()
        ),
    };
    plinth_secrets::write_private(&path, &new).with_context(|| format!("cannot write {}", path.display()))?;
    let after = plinth_secrets::Keyring::load_or_create(&path)?;
    Ok(match action {
        "rotate" => format!(
            "new sealing key {}; keys {} still open older values. Restart the server to re-seal, then run `plinth secrets prune`.",
            after.key_ids()[0],
            before.key_ids().join(", ")
        ),
        _ => format!("kept key {}; dropped {}", after.key_ids()[0], before.key_ids()[1..].join(", ")),
    })
}
