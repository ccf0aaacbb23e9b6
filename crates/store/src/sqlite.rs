//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a write is on disk before `apply` returns and survives `kill -9` and
//! power loss. One writer connection (SQLite serialises writers anyway) and a
//! few reader connections that read concurrently with it. Calls run on
//! tokio's blocking pool so the async runtime never waits on disk.

use crate::{
    Action, BootEventQuery, Change, Expect, Filter, ListQuery, MAX_PAGE, Page, Record, Store, StoreError, WriteOp,
};
use async_trait::async_trait;
use plinth_model::BootEvent;
use plinth_model::{Kind, integrity};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run. Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE objects (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        revision INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (kind, key)
    ) WITHOUT ROWID;",
    "CREATE TABLE boot_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        mac TEXT,
        address TEXT,
        service TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX boot_events_mac ON boot_events (mac, id);",
    "CREATE TABLE lookup (
        kind TEXT NOT NULL,
        field TEXT NOT NULL,
        value TEXT NOT NULL,
        key TEXT NOT NULL,
        PRIMARY KEY (kind, field, value, key)
    ) WITHOUT ROWID;
    CREATE INDEX lookup_key ON lookup (kind, key);
    CREATE TABLE lookup_fields (signature TEXT NOT NULL);",
    "CREATE TABLE job_logs (
        job TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at TEXT NOT NULL,
        chunk TEXT NOT NULL,
        PRIMARY KEY (job, seq)
    ) WITHOUT ROWID;",
    "ALTER TABLE boot_events ADD COLUMN machine TEXT;
    CREATE INDEX boot_events_machine ON boot_events (machine, id);",
    "CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        before TEXT,
        after TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_object ON audit (kind, key, seq);
    CREATE INDEX audit_actor ON audit (actor, seq);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
    // Every reference between objects (`plinth_model::integrity`), so a
    // delete finds what names the object by index; filled on the next start.
    "CREATE TABLE refs (
        to_kind TEXT NOT NULL,
        to_key TEXT NOT NULL,
        from_kind TEXT NOT NULL,
        from_key TEXT NOT NULL,
        field TEXT NOT NULL,
        holds INTEGER NOT NULL,
        PRIMARY KEY (to_kind, to_key, from_kind, from_key, field)
    ) WITHOUT ROWID;
    CREATE INDEX refs_from ON refs (from_kind, from_key);",
];

/// Top-level fields whose text values (or arrays of text) are kept in the
/// `lookup` table, so an equality filter on them is an index lookup instead
/// of a scan of the kind: the lookups a boot request makes (a machine by
/// MAC, a lease by MAC), the agent's (jobs and tokens of a machine), and
/// every unique field (`plinth_model::integrity::unique_fields`), whose
/// holders a write checks. Changing this list rebuilds the table on the
/// next start.
const INDEXED: &[(Kind, &str)] = &[
    (Kind::Machine, "macs"),
    (Kind::Machine, "name"),
    (Kind::Lease, "mac"),
    (Kind::Job, "machine"),
    (Kind::Token, "machine"),
    (Kind::Reservation, "address"),
];

/// Bumped when what the `refs` table holds changes, which rebuilds it.
const REFS_VERSION: &str = "refs-1";

fn indexed(kind: Kind, field: &str) -> bool {
    INDEXED.iter().any(|(k, f)| *k == kind && *f == field)
}

fn lookup_signature() -> String {
    let fields: Vec<String> = INDEXED.iter().map(|(k, f)| format!("{}.{f}", k.plural())).collect();
    format!("{};{REFS_VERSION}", fields.join(","))
}

/// Replaces the lookup rows of one object.
fn index_object(tx: &Connection, kind: Kind, key: &str, body: Option<&Value>) -> Result<(), StoreError> {
    if !INDEXED.iter().any(|(k, _)| *k == kind) {
        return Ok(());
    }
    tx.prepare_cached("DELETE FROM lookup WHERE kind = ?1 AND key = ?2")
        .map_err(backend)?
        .execute(params![kind.plural(), key])
        .map_err(backend)?;
    let Some(body) = body else { return Ok(()) };
    let mut insert = tx
        .prepare_cached("INSERT OR IGNORE INTO lookup (kind, field, value, key) VALUES (?1, ?2, ?3, ?4)")
        .map_err(backend)?;
    for (_, field) in INDEXED.iter().filter(|(k, _)| *k == kind) {
        for v in integrity::field_values(body, field) {
            insert.execute(params![kind.plural(), field, v, key]).map_err(backend)?;
        }
    }
    Ok(())
}

/// Values of `kind`'s unique fields that `body` gives object `key` and its
/// stored version did not have (read before [`index_object`] replaces them).
fn added_unique(tx: &Connection, kind: Kind, key: &str, body: &Value) -> Result<Vec<(String, String)>, StoreError> {
    let fields = integrity::unique_fields(kind);
    if fields.is_empty() {
        return Ok(Vec::new());
    }
    let old: HashSet<(String, String)> = tx
        .prepare_cached("SELECT field, value FROM lookup WHERE kind = ?1 AND key = ?2")
        .map_err(backend)?
        .query_map(params![kind.plural(), key], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    let mut out = Vec::new();
    for field in fields {
        for v in integrity::field_values(body, field) {
            let pair = ((*field).to_owned(), v.to_owned());
            if !old.contains(&pair) {
                out.push(pair);
            }
        }
    }
    Ok(out)
}

/// Replaces the `refs` rows of one object; returns the references whose
/// target the stored version did not name (those must exist at commit).
fn index_refs(
    tx: &Connection,
    kind: Kind,
    key: &str,
    body: Option<&Value>,
) -> Result<Vec<integrity::Reference>, StoreError> {
    if !integrity::has_references(kind) {
        return Ok(Vec::new());
    }
    let old: HashSet<(String, String)> = tx
        .prepare_cached("SELECT to_kind, to_key FROM refs WHERE from_kind = ?1 AND from_key = ?2")
        .map_err(backend)?
        .query_map(params![kind.plural(), key], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    tx.prepare_cached("DELETE FROM refs WHERE from_kind = ?1 AND from_key = ?2")
        .map_err(backend)?
        .execute(params![kind.plural(), key])
        .map_err(backend)?;
    let Some(body) = body else { return Ok(Vec::new()) };
    let mut insert = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO refs (to_kind, to_key, from_kind, from_key, field, holds) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(backend)?;
    let mut added = Vec::new();
    for r in integrity::references(kind, body) {
        insert.execute(params![r.kind.plural(), r.key, kind.plural(), key, r.field, r.holds]).map_err(backend)?;
        if !old.contains(&(r.kind.plural().to_owned(), r.key.clone())) {
            added.push(r);
        }
    }
    Ok(added)
}

/// An object as an integrity message names it (machines by name and id).
fn describe_stored(tx: &Connection, kind: Kind, key: &str) -> Result<String, StoreError> {
    let name: Option<Option<String>> = tx
        .prepare_cached("SELECT json_extract(body, '$.name') FROM objects WHERE kind = ?1 AND key = ?2")
        .map_err(backend)?
        .query_row(params![kind.plural(), key], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    let body = name.flatten().map(|n| serde_json::json!({ "name": n }));
    Ok(integrity::describe(kind, key, body.as_ref()))
}

fn exists(tx: &Connection, kind: &str, key: &str) -> Result<bool, StoreError> {
    tx.prepare_cached("SELECT 1 FROM objects WHERE kind = ?1 AND key = ?2")
        .map_err(backend)?
        .exists(params![kind, key])
        .map_err(backend)
}

/// What a batch's writes must still satisfy when all of them are done:
/// the checks are deferred to the end, so a batch may move a MAC between
/// machines or create objects in any order.
#[derive(Default)]
struct Deferred {
    /// (kind, key, description, field, value) of unique values written.
    unique: Vec<(Kind, String, String, String, String)>,
    /// (kind, key, description, reference) of references written.
    refs: Vec<(Kind, String, String, integrity::Reference)>,
    /// (kind, key, description) of deleted objects.
    deleted: Vec<(Kind, String, String)>,
}

impl Deferred {
    fn check(self, tx: &Connection) -> Result<(), StoreError> {
        for (kind, key, object, field, value) in self.unique {
            let holder: Option<String> = tx
                .prepare_cached(
                    "SELECT key FROM lookup WHERE kind = ?1 AND field = ?2 AND value = ?3 AND key <> ?4 ORDER BY key LIMIT 1",
                )
                .map_err(backend)?
                .query_row(params![kind.plural(), field, value, key], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            // Still this object's value (a later write in the batch may
            // have taken it away again)?
            let still: bool = tx
                .prepare_cached("SELECT 1 FROM lookup WHERE kind = ?1 AND field = ?2 AND value = ?3 AND key = ?4")
                .map_err(backend)?
                .exists(params![kind.plural(), field, value, key])
                .map_err(backend)?;
            if let (Some(holder), true) = (holder, still) {
                let holder = describe_stored(tx, kind, &holder)?;
                return Err(StoreError::Unique { kind, object, field, value, holder });
            }
        }
        for (kind, key, object, r) in self.refs {
            let still: bool = tx
                .prepare_cached(
                    "SELECT 1 FROM refs WHERE to_kind = ?1 AND to_key = ?2 AND from_kind = ?3 AND from_key = ?4 AND field = ?5",
                )
                .map_err(backend)?
                .exists(params![r.kind.plural(), r.key, kind.plural(), key, r.field])
                .map_err(backend)?;
            if still && !exists(tx, r.kind.plural(), &r.key)? {
                return Err(StoreError::Dangling { kind, object, field: r.field, target_kind: r.kind, target: r.key });
            }
        }
        for (kind, key, object) in self.deleted {
            if exists(tx, kind.plural(), &key)? {
                continue;
            }
            let by: Vec<(String, String, String)> = tx
                .prepare_cached(
                    "SELECT from_kind, from_key, field FROM refs WHERE to_kind = ?1 AND to_key = ?2 AND holds = 1
                     ORDER BY from_kind, from_key LIMIT 11",
                )
                .map_err(backend)?
                .query_map(params![kind.plural(), key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            if by.is_empty() {
                continue;
            }
            let mut names = Vec::new();
            for (i, (from_kind, from_key, field)) in by.iter().enumerate() {
                if i == 10 {
                    names.push("and more".to_owned());
                    break;
                }
                let from = Kind::from_plural(from_kind)
                    .map(|k| describe_stored(tx, k, from_key))
                    .transpose()?
                    .unwrap_or_else(|| format!("{from_kind} `{from_key}`"));
                names.push(format!("{from} (field `{field}`)"));
            }
            return Err(StoreError::Referenced { kind, object, by: names });
        }
        Ok(())
    }
}

/// Rebuilds the lookup and refs tables when what they hold changed (or on
/// the migration that created them).
fn rebuild_lookup(tx: &Connection) -> Result<(), StoreError> {
    let have: Option<String> =
        tx.query_row("SELECT signature FROM lookup_fields", [], |r| r.get(0)).optional().map_err(backend)?;
    let want = lookup_signature();
    if have.as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    tx.execute("DELETE FROM lookup", []).map_err(backend)?;
    tx.execute("DELETE FROM refs", []).map_err(backend)?;
    let kinds = Kind::ALL.into_iter().filter(|k| INDEXED.iter().any(|(i, _)| i == k) || integrity::has_references(*k));
    for kind in kinds {
        let rows: Vec<(String, String)> = tx
            .prepare("SELECT key, body FROM objects WHERE kind = ?1")
            .map_err(backend)?
            .query_map(params![kind.plural()], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        for (key, text) in rows {
            let body = parse_body(kind, &key, &text)?;
            index_object(tx, kind, &key, Some(&body))?;
            index_refs(tx, kind, &key, Some(&body))?;
        }
    }
    tx.execute("DELETE FROM lookup_fields", []).map_err(backend)?;
    tx.execute("INSERT INTO lookup_fields (signature) VALUES (?1)", params![want]).map_err(backend)?;
    tracing::info!(fields = %want, "rebuilt the store's lookup index");
    Ok(())
}

const READERS: usize = 3;

/// The embedded SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    events: broadcast::Sender<Change>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Overwrite deleted content, so an old value (say, of a param made
    // secure later) does not linger in free pages.
    conn.pragma_update(None, "secure_delete", "ON")?;
    // Every statement of a write stays prepared (the default 16 is fewer
    // than one put with its indexes and references uses).
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending
    /// migrations.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        }
        // A new database is readable by its owner only; SQLite gives its WAL
        // and shared-memory files the same mode.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", path.display())))?;
        }
        let mut writer =
            Connection::open(path).map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        let mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!("{} cannot use WAL mode (got {mode})", path.display())));
        }
        configure(&writer).map_err(backend)?;
        migrate(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| {
                let c = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(backend)?;
                configure(&c).map_err(backend)?;
                Ok(Mutex::new(c))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (events, _) = broadcast::channel(4096);
        Ok(SqliteStore {
            inner: Arc::new(Inner { writer: Mutex::new(writer), readers, next_reader: AtomicUsize::new(0), events }),
        })
    }

    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            let conn = inner.readers[i].lock().map_err(|_| StoreError::Backend("reader lock poisoned".into()))?;
            f(&conn)
        })
        .await
        .map_err(backend)?
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(backend)?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "the database is at schema version {version}, newer than this Plinth ({}); upgrade Plinth",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql).map_err(|e| StoreError::Backend(format!("migration {}: {e}", i + 1)))?;
        tracing::info!(version = i + 1, "applied store migration");
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len()).map_err(backend)?;
    rebuild_lookup(&tx)?;
    tx.commit().map_err(backend)
}

fn parse_body(kind: Kind, key: &str, text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Backend(format!("{kind} `{key}` has a corrupt body: {e}")))
}

/// SQLite JSON path for a field path; segments are restricted so the path
/// cannot be misread (it is bound as a parameter anyway).
fn json_path(path: &[String]) -> Result<String, StoreError> {
    if path.is_empty() {
        return Err(StoreError::Query("empty field path".into()));
    }
    let mut out = String::from("$");
    for seg in path {
        if seg.is_empty() || !seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(StoreError::Query(format!("bad field name `{}`", seg.escape_debug())));
        }
        out.push_str(".\"");
        out.push_str(seg);
        out.push('"');
    }
    Ok(out)
}

/// Appends the SQL condition for one filter to `sql`, binding into `args`.
fn filter_sql(f: &Filter, sql: &mut String, args: &mut Vec<SqlValue>) -> Result<(), StoreError> {
    args.push(SqlValue::Text(json_path(&f.path)?));
    let p = args.len();
    let cond = match &f.value {
        Value::Null => {
            sql.push_str(&format!(" AND (json_type(body, ?{p}) IS NULL OR json_type(body, ?{p}) = 'null')"));
            return Ok(());
        }
        Value::Bool(true) => "je.type = 'true'".to_owned(),
        Value::Bool(false) => "je.type = 'false'".to_owned(),
        Value::String(s) => {
            args.push(SqlValue::Text(s.clone()));
            format!("je.type = 'text' AND je.atom = ?{}", args.len())
        }
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                args.push(SqlValue::Integer(i));
            } else {
                args.push(SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)));
            }
            format!("je.type IN ('integer', 'real') AND je.atom = ?{}", args.len())
        }
        Value::Array(_) | Value::Object(_) => return Err(StoreError::Query("a filter value must be a scalar".into())),
    };
    // json_each over a scalar yields the scalar itself; over an array, its
    // elements: so one condition covers "equals" and "contains".
    sql.push_str(&format!(
        " AND json_type(body, ?{p}) IS NOT 'object' AND EXISTS (SELECT 1 FROM json_each(objects.body, ?{p}) je WHERE {cond})"
    ));
    Ok(())
}

fn check_expect(kind: Kind, key: &str, expect: Expect, current: Option<u64>) -> Result<(), StoreError> {
    let not_found = || StoreError::NotFound { kind, key: key.to_owned() };
    match (expect, current) {
        (Expect::Any, _) => Ok(()),
        (Expect::Absent, None) => Ok(()),
        (Expect::Absent, Some(_)) => Err(StoreError::Exists { kind, key: key.to_owned() }),
        (Expect::Present, Some(_)) => Ok(()),
        (Expect::Present | Expect::Revision(_), None) => Err(not_found()),
        (Expect::Revision(want), Some(have)) if want == have => Ok(()),
        (Expect::Revision(want), Some(have)) => {
            Err(StoreError::Conflict { kind, key: key.to_owned(), expected: want, actual: have })
        }
    }
}

/// An object as the audit log keeps it: without server-only fields.
fn audit_body(kind: Kind, body: &Value) -> Option<String> {
    let mut b = body.clone();
    if let Value::Object(m) = &mut b {
        for f in kind.server_only_fields() {
            m.remove(*f);
        }
    }
    serde_json::to_string(&b).ok()
}

fn insert_audit(tx: &rusqlite::Transaction<'_>, e: &plinth_model::AuditEntry) -> Result<(), StoreError> {
    let at = serde_json::to_value(e.at).map_err(backend)?;
    let text = |v: &Option<Value>| v.as_ref().and_then(|v| serde_json::to_string(v).ok());
    tx.prepare_cached(
        "INSERT INTO audit (at, actor, action, kind, key, before, after, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .map_err(backend)?
    .execute(params![
        at.as_str().unwrap_or_default(),
        e.actor,
        e.action,
        e.kind,
        e.key,
        text(&e.before),
        text(&e.after),
        e.detail
    ])
    .map_err(backend)?;
    Ok(())
}

/// Records a change in the audit log, in the change's transaction.
fn audit_change(
    tx: &rusqlite::Transaction<'_>,
    actor: &str,
    action: Action,
    kind: Kind,
    key: &str,
    before: Option<&Value>,
    after: Option<String>,
) -> Result<(), StoreError> {
    let entry = plinth_model::AuditEntry::new(
        actor.to_owned(),
        action.as_str(),
        kind,
        key.to_owned(),
        before.and_then(|b| audit_body(kind, b)).and_then(|t| serde_json::from_str(&t).ok()),
        after.and_then(|t| serde_json::from_str(&t).ok()),
        String::new(),
    );
    insert_audit(tx, &entry)
}

fn apply_sync(conn: &mut Connection, ops: Vec<WriteOp>, actor: Option<&str>) -> Result<Vec<Change>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    let now = serde_json::to_value(plinth_model::now()).map_err(backend)?;
    let now_text = now.as_str().unwrap_or_default().to_owned();
    let mut changes = Vec::with_capacity(ops.len());
    let mut deferred = Deferred::default();
    for op in ops {
        match op {
            WriteOp::Put { kind, key, mut body, expect } => {
                let current: Option<(u64, String, String)> = tx
                    .prepare_cached("SELECT revision, created_at, body FROM objects WHERE kind = ?1 AND key = ?2")
                    .and_then(|mut s| {
                        s.query_row(params![kind.plural(), key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()
                    })
                    .map_err(backend)?;
                let before = current.as_ref().map(|c| c.2.clone());
                check_expect(kind, &key, expect, current.as_ref().map(|c| c.0))?;
                let Some(map) = body.as_object_mut() else {
                    return Err(StoreError::Query(format!("{kind} `{key}`: body is not a JSON object")));
                };
                let revision = current.as_ref().map_or(1, |c| c.0 + 1);
                let created = current.map_or_else(|| now_text.clone(), |c| c.1);
                map.insert("revision".into(), Value::from(revision));
                map.insert("created_at".into(), Value::String(created.clone()));
                map.insert("updated_at".into(), now.clone());
                let text = serde_json::to_string(&body).map_err(backend)?;
                tx.prepare_cached(
                    "INSERT INTO objects (kind, key, revision, created_at, updated_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (kind, key) DO UPDATE SET revision = excluded.revision,
                        updated_at = excluded.updated_at, body = excluded.body",
                )
                .and_then(|mut s| s.execute(params![kind.plural(), key, revision, created, now_text, text]))
                .map_err(backend)?;
                let object = || integrity::describe(kind, &key, Some(&body));
                for (field, value) in added_unique(&tx, kind, &key, &body)? {
                    deferred.unique.push((kind, key.clone(), object(), field, value));
                }
                index_object(&tx, kind, &key, Some(&body))?;
                for r in index_refs(&tx, kind, &key, Some(&body))? {
                    deferred.refs.push((kind, key.clone(), object(), r));
                }
                let action = if revision == 1 { Action::Created } else { Action::Updated };
                if let Some(actor) = actor {
                    let before = before.and_then(|b| serde_json::from_str::<Value>(&b).ok());
                    audit_change(&tx, actor, action, kind, &key, before.as_ref(), audit_body(kind, &body))?;
                }
                changes.push(Change { kind, action, key, revision, object: body });
            }
            WriteOp::Delete { kind, key, expect } => {
                let current: Option<(u64, String)> = tx
                    .query_row(
                        "SELECT revision, body FROM objects WHERE kind = ?1 AND key = ?2",
                        params![kind.plural(), key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(backend)?;
                let Some((revision, text)) = current else {
                    return Err(StoreError::NotFound { kind, key });
                };
                check_expect(kind, &key, expect, Some(revision))?;
                let object = parse_body(kind, &key, &text)?;
                tx.execute("DELETE FROM objects WHERE kind = ?1 AND key = ?2", params![kind.plural(), key])
                    .map_err(backend)?;
                index_object(&tx, kind, &key, None)?;
                index_refs(&tx, kind, &key, None)?;
                if kind == Kind::Job {
                    // A job's log goes with it.
                    tx.prepare_cached("DELETE FROM job_logs WHERE job = ?1")
                        .map_err(backend)?
                        .execute(params![key])
                        .map_err(backend)?;
                }
                deferred.deleted.push((kind, key.clone(), integrity::describe(kind, &key, Some(&object))));
                if let Some(actor) = actor {
                    audit_change(&tx, actor, Action::Deleted, kind, &key, Some(&object), None)?;
                }
                changes.push(Change { kind, action: Action::Deleted, key, revision, object });
            }
        }
    }
    deferred.check(&tx)?;
    tx.commit().map_err(backend)?;
    Ok(changes)
}

impl SqliteStore {
    async fn apply_as(&self, ops: Vec<WriteOp>, actor: Option<String>) -> Result<Vec<Change>, StoreError> {
        let inner = self.inner.clone();
        let changes = tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().map_err(|_| StoreError::Backend("writer lock poisoned".into()))?;
            apply_sync(&mut conn, ops, actor.as_deref())
        })
        .await
        .map_err(backend)??;
        for c in &changes {
            // No subscribers is fine: nobody is watching.
            let _ = self.inner.events.send(c.clone());
        }
        Ok(changes)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, kind: Kind, key: &str) -> Result<Option<Record>, StoreError> {
        let key = key.to_owned();
        self.with_reader(move |conn| {
            let row: Option<(u64, String)> = conn
                .prepare_cached("SELECT revision, body FROM objects WHERE kind = ?1 AND key = ?2")
                .map_err(backend)?
                .query_row(params![kind.plural(), key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(backend)?;
            row.map(|(revision, text)| Ok(Record { kind, body: parse_body(kind, &key, &text)?, key, revision }))
                .transpose()
        })
        .await
    }

    async fn list(&self, kind: Kind, query: &ListQuery) -> Result<Page, StoreError> {
        let limit = query.limit.clamp(1, MAX_PAGE);
        let mut sql = String::from("SELECT key, revision, body FROM objects WHERE kind = ?1");
        let mut args = vec![SqlValue::Text(kind.plural().to_owned())];
        if let Some(after) = &query.after {
            args.push(SqlValue::Text(after.clone()));
            sql.push_str(&format!(" AND key > ?{}", args.len()));
        }
        for f in &query.filters {
            match (&f.path[..], &f.value) {
                ([field], Value::String(v)) if indexed(kind, field) => {
                    args.push(SqlValue::Text(field.clone()));
                    args.push(SqlValue::Text(v.clone()));
                    let n = args.len();
                    sql.push_str(&format!(
                        " AND key IN (SELECT key FROM lookup WHERE kind = ?1 AND field = ?{} AND value = ?{n})",
                        n - 1
                    ));
                }
                _ => filter_sql(f, &mut sql, &mut args)?,
            }
        }
        sql.push_str(&format!(" ORDER BY key LIMIT {}", limit + 1));
        self.with_reader(move |conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?, r.get::<_, String>(2)?))
                })
                .map_err(backend)?;
            let mut items = Vec::new();
            for row in rows {
                let (key, revision, text) = row.map_err(backend)?;
                items.push(Record { kind, body: parse_body(kind, &key, &text)?, key, revision });
            }
            let next = if items.len() > limit {
                items.truncate(limit);
                items.last().map(|r| r.key.clone())
            } else {
                None
            };
            Ok(Page { items, next })
        })
        .await
    }

    async fn apply(&self, ops: Vec<WriteOp>) -> Result<Vec<Change>, StoreError> {
        self.apply_as(ops, None).await
    }

    async fn apply_audited(&self, ops: Vec<WriteOp>, actor: String) -> Result<Vec<Change>, StoreError> {
        self.apply_as(ops, Some(actor)).await
    }

    async fn append_audit(&self, entries: Vec<plinth_model::AuditEntry>) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().map_err(|_| StoreError::Backend("writer lock poisoned".into()))?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            for e in &entries {
                insert_audit(&tx, e)?;
            }
            tx.commit().map_err(backend)
        })
        .await
        .map_err(backend)?
    }

    async fn audit(&self, query: &crate::AuditQuery) -> Result<Vec<plinth_model::AuditEntry>, StoreError> {
        let q = query.clone();
        let limit = q.limit.clamp(1, MAX_PAGE) as i64;
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, at, actor, action, kind, key, before, after, detail FROM audit
                     WHERE seq > ?1 AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR key = ?3) AND (?4 IS NULL OR actor = ?4)
                     ORDER BY seq LIMIT ?5",
                )
                .map_err(backend)?;
            type Row = (i64, String, String, String, String, String, Option<String>, Option<String>, String);
            let rows = stmt
                .query_map(params![q.after.unwrap_or(0) as i64, q.kind, q.key, q.actor, limit], |r| -> rusqlite::Result<Row> {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
                })
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, at, actor, action, kind, key, before, after, detail) = row.map_err(backend)?;
                let json = |t: Option<String>| t.and_then(|t| serde_json::from_str(&t).ok());
                out.push(plinth_model::AuditEntry {
                    seq: seq as u64,
                    at: serde_json::from_value(Value::String(at)).map_err(backend)?,
                    actor,
                    action,
                    kind,
                    key,
                    before: json(before),
                    after: json(after),
                    detail,
                });
            }
            Ok(out)
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.events.subscribe()
    }

    async fn integrity(&self) -> Result<Vec<crate::Problem>, StoreError> {
        self.with_reader(|conn| {
            let mut out = Vec::new();
            for kind in Kind::ALL {
                for field in integrity::unique_fields(kind) {
                    let mut stmt = conn
                        .prepare_cached(
                            "SELECT value, group_concat(key, char(10)) FROM lookup WHERE kind = ?1 AND field = ?2
                             GROUP BY value HAVING count(*) > 1 ORDER BY value",
                        )
                        .map_err(backend)?;
                    let rows: Vec<(String, String)> = stmt
                        .query_map(params![kind.plural(), field], |r| Ok((r.get(0)?, r.get(1)?)))
                        .map_err(backend)?
                        .collect::<Result<_, _>>()
                        .map_err(backend)?;
                    for (value, keys) in rows {
                        let mut holders = Vec::new();
                        for key in keys.split('\n') {
                            holders.push(describe_stored(conn, kind, key)?);
                        }
                        holders.sort();
                        out.push(crate::Problem::Duplicate { kind, field: (*field).to_owned(), value, holders });
                    }
                }
            }
            let mut stmt = conn
                .prepare_cached(
                    "SELECT from_kind, from_key, field, to_kind, to_key FROM refs r WHERE holds = 1 AND NOT EXISTS
                     (SELECT 1 FROM objects o WHERE o.kind = r.to_kind AND o.key = r.to_key)
                     ORDER BY from_kind, from_key, field LIMIT 10000",
                )
                .map_err(backend)?;
            let rows: Vec<(String, String, String, String, String)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            for (from_kind, from_key, field, to_kind, target) in rows {
                let (Some(from), Some(target_kind)) = (Kind::from_plural(&from_kind), Kind::from_plural(&to_kind))
                else {
                    continue;
                };
                let object = describe_stored(conn, from, &from_key)?;
                out.push(crate::Problem::Dangling { object, field, target_kind, target });
            }
            Ok(out)
        })
        .await
    }

    async fn append_boot_events(&self, events: Vec<BootEvent>) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().map_err(|_| StoreError::Backend("writer lock poisoned".into()))?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO boot_events (at, mac, address, service, detail, machine) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .map_err(backend)?;
                for e in &events {
                    let at = serde_json::to_value(e.at).map_err(backend)?;
                    stmt.execute(params![
                        at.as_str().unwrap_or_default(),
                        e.mac.map(|m| m.to_string()),
                        e.address.map(|a| a.to_string()),
                        e.service,
                        e.detail,
                        e.machine.map(|m| m.to_string())
                    ])
                    .map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)
        })
        .await
        .map_err(backend)?
    }

    async fn prune_boot_events(&self, before: chrono::DateTime<chrono::Utc>, keep: u64) -> Result<u64, StoreError> {
        let inner = self.inner.clone();
        let before = serde_json::to_value(before).map_err(backend)?;
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().map_err(|_| StoreError::Backend("writer lock poisoned".into()))?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let old = tx
                .execute("DELETE FROM boot_events WHERE at < ?1", params![before.as_str().unwrap_or_default()])
                .map_err(backend)?;
            let over = tx
                .execute(
                    "DELETE FROM boot_events WHERE id <= (SELECT max(id) FROM boot_events) - ?1",
                    params![keep.min(i64::MAX as u64) as i64],
                )
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok((old + over) as u64)
        })
        .await
        .map_err(backend)?
    }

    async fn append_job_log(
        &self,
        job: plinth_model::JobId,
        seq: u64,
        chunk: String,
        max_bytes: u64,
    ) -> Result<crate::LogAppend, StoreError> {
        use crate::LogAppend;
        let inner = self.inner.clone();
        let at = serde_json::to_value(plinth_model::now()).map_err(backend)?;
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().map_err(|_| StoreError::Backend("writer lock poisoned".into()))?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let job = job.to_string();
            let at = at.as_str().unwrap_or_default().to_owned();
            let taken: bool = tx
                .prepare_cached("SELECT 1 FROM job_logs WHERE job = ?1 AND seq = ?2")
                .map_err(backend)?
                .exists(params![job, seq as i64])
                .map_err(backend)?;
            if taken {
                return Ok(LogAppend::Duplicate);
            }
            // The cut is marked by a chunk at the largest number, after all.
            let (stored, cut): (i64, bool) = tx
                .prepare_cached(
                    "SELECT coalesce(sum(length(CAST(chunk AS BLOB))), 0), coalesce(max(seq) = ?2, 0) FROM job_logs WHERE job = ?1",
                )
                .map_err(backend)?
                .query_row(params![job, i64::MAX], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(backend)?;
            if cut {
                return Ok(LogAppend::Truncated);
            }
            let room = max_bytes.saturating_sub(stored.max(0) as u64) as usize;
            let insert = |seq: i64, text: &str| {
                tx.prepare_cached("INSERT INTO job_logs (job, seq, at, chunk) VALUES (?1, ?2, ?3, ?4)")
                    .map_err(backend)?
                    .execute(params![job, seq, at, text])
                    .map_err(backend)
            };
            let outcome = if chunk.len() <= room {
                insert(seq as i64, &chunk)?;
                LogAppend::Stored
            } else {
                let mut end = room;
                while !chunk.is_char_boundary(end) {
                    end -= 1;
                }
                if end > 0 {
                    insert(seq as i64, &chunk[..end])?;
                }
                insert(i64::MAX, &crate::truncation_note(max_bytes))?;
                LogAppend::Truncated
            };
            tx.commit().map_err(backend)?;
            Ok(outcome)
        })
        .await
        .map_err(backend)?
    }

    async fn job_log(&self, job: plinth_model::JobId) -> Result<String, StoreError> {
        self.with_reader(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT chunk FROM job_logs WHERE job = ?1 ORDER BY seq").map_err(backend)?;
            let rows = stmt.query_map(params![job.to_string()], |r| r.get::<_, String>(0)).map_err(backend)?;
            let mut out = String::new();
            for r in rows {
                out.push_str(&r.map_err(backend)?);
            }
            Ok(out)
        })
        .await
    }

    async fn boot_events(&self, query: &BootEventQuery) -> Result<Vec<BootEvent>, StoreError> {
        let mac = query.mac.map(|m| m.to_string());
        let machine = query.machine.map(|m| m.to_string());
        let after = query.after.unwrap_or(0) as i64;
        let limit = query.limit.clamp(1, MAX_PAGE) as i64;
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, at, mac, address, service, detail, machine FROM boot_events
                     WHERE id > ?1 AND (?2 IS NULL OR mac = ?2) AND (?3 IS NULL OR machine = ?3) ORDER BY id LIMIT ?4",
                )
                .map_err(backend)?;
            type Row = (i64, String, Option<String>, Option<String>, String, String, Option<String>);
            let rows = stmt
                .query_map(params![after, mac, machine, limit], |r| -> rusqlite::Result<Row> {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
                })
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, at, mac, address, service, detail, machine) = row.map_err(backend)?;
                out.push(BootEvent {
                    id: id as u64,
                    at: serde_json::from_value(Value::String(at)).map_err(backend)?,
                    mac: mac.and_then(|m| m.parse().ok()),
                    address: address.and_then(|a| a.parse().ok()),
                    machine: machine.and_then(|m| m.parse().ok()),
                    service,
                    detail,
                });
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_unique_field_is_indexed() {
        for kind in plinth_model::Kind::ALL {
            for field in plinth_model::integrity::unique_fields(kind) {
                assert!(super::indexed(kind, field), "{kind}.{field} is unique but not in INDEXED");
            }
        }
    }
}
