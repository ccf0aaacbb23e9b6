//! Plinth's storage seam.
//!
//! The [`Store`] trait is the only way the server reads or writes state. It
//! stores every object as a JSON document under `(kind, key)` with a
//! revision, and applies batches of writes atomically with per-object
//! preconditions, which is what optimistic concurrency, lease allocation and
//! job hand-out are built on. Every committed change is published to
//! subscribers (the event stream) after the commit, never before.
//!
//! The embedded backend, and the only one, is [`SqliteStore`]; a backend
//! implements this trait and passes the [`conformance`] suite. Every backend
//! enforces the integrity rules of `plinth_model::integrity` on every batch
//! (unique MACs, names and addresses; references that exist and hold).
//!
//! This crate never validates object shapes: callers pass bodies that went
//! through `plinth_model::normalize`. It owns exactly three body fields:
//! `revision`, `created_at` and `updated_at`.
#![forbid(unsafe_code)]

pub mod conformance;
mod sqlite;

pub use sqlite::SqliteStore;

use async_trait::async_trait;
use plinth_model::{BootEvent, Kind};
use serde_json::Value;
use tokio::sync::broadcast;

/// A stored object.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its kind.
    pub kind: Kind,
    /// Its key within the kind.
    pub key: String,
    /// Revision, starting at 1 and incremented by every write.
    pub revision: u64,
    /// The object, including `revision`, `created_at` and `updated_at`.
    pub body: Value,
}

/// What a write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Anything (create or overwrite).
    Any,
    /// Nothing: the key must be free.
    Absent,
    /// An object at any revision.
    Present,
    /// An object at exactly this revision.
    Revision(u64),
}

/// One write in an atomic batch.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Create or replace an object.
    Put { kind: Kind, key: String, body: Value, expect: Expect },
    /// Delete an object.
    Delete { kind: Kind, key: String, expect: Expect },
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Updated,
    Deleted,
}

impl Action {
    /// Lower-case name used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Deleted => "deleted",
        }
    }
}

/// A committed change, as published to subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: Kind,
    pub action: Action,
    pub key: String,
    /// The object's revision after the write (before it, for deletes).
    pub revision: u64,
    /// The object after the write (before it, for deletes).
    pub object: Value,
}

/// An equality filter on a (possibly nested) field. An array field matches
/// when any element equals the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Field path, e.g. `["bootenv"]` or `["os", "family"]`.
    pub path: Vec<String>,
    /// A JSON scalar (string, number, boolean or null).
    pub value: Value,
}

/// A page request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListQuery {
    /// All filters must match.
    pub filters: Vec<Filter>,
    /// Return keys strictly after this one (the `next` of the previous page).
    pub after: Option<String>,
    /// Page size; backends cap it at [`MAX_PAGE`].
    pub limit: usize,
}

/// The largest page a backend returns.
pub const MAX_PAGE: usize = 10_000;

/// How many times [`StoreExt::update_as`] retries after losing a race.
pub const UPDATE_RETRIES: usize = 20;

/// A page of results, ordered by key.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<Record>,
    /// Cursor of the next page, if there may be one.
    pub next: Option<String>,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{kind} `{key}` not found")]
    NotFound { kind: Kind, key: String },
    #[error("{kind} `{key}` already exists")]
    Exists { kind: Kind, key: String },
    #[error("{kind} `{key}` is at revision {actual}, not {expected}: reload it and retry")]
    Conflict { kind: Kind, key: String, expected: u64, actual: u64 },
    #[error("invalid query: {0}")]
    Query(String),
    /// A write gives an object a value of a unique field that another
    /// object holds (a MAC, a machine name, a reserved address).
    #[error("{object}: {field} `{value}` already belongs to {holder}")]
    Unique { kind: Kind, object: String, field: String, value: String, holder: String },
    /// A write names an object that does not exist.
    #[error("{object}: field `{field}` names {target_kind} `{target}`, which does not exist")]
    Dangling { kind: Kind, object: String, field: String, target_kind: Kind, target: String },
    /// A delete would leave objects naming the deleted one.
    #[error("{object} is still named by {}; change or delete {} first", .by.join(", "), if .by.len() == 1 { "it" } else { "them" })]
    Referenced { kind: Kind, object: String, by: Vec<String> },
    #[error("storage failure: {0}")]
    Backend(String),
    /// Every attempt of a read-modify-write lost a race with another writer.
    #[error("{kind} `{key}` kept changing while this change was made; try again")]
    Busy { kind: Kind, key: String },
}

/// The storage seam. Implementations are cheap to share (`Arc<dyn Store>`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one object.
    async fn get(&self, kind: Kind, key: &str) -> Result<Option<Record>, StoreError>;

    /// Lists objects of a kind in key order.
    async fn list(&self, kind: Kind, query: &ListQuery) -> Result<Page, StoreError>;

    /// Applies all writes or none. Returns the changes, in order; they are
    /// durable when this returns and are then published to subscribers.
    async fn apply(&self, ops: Vec<WriteOp>) -> Result<Vec<Change>, StoreError>;

    /// Subscribes to committed changes.
    fn subscribe(&self) -> broadcast::Receiver<Change>;

    /// Appends boot events in one transaction, assigning their ids.
    async fn append_boot_events(&self, events: Vec<BootEvent>) -> Result<(), StoreError>;

    /// Boot events in id order, optionally for one MAC, after an id.
    async fn boot_events(&self, query: &BootEventQuery) -> Result<Vec<BootEvent>, StoreError>;

    /// Deletes boot events older than `before`, and all but the newest
    /// `keep` of the rest; returns how many went.
    async fn prune_boot_events(&self, before: chrono::DateTime<chrono::Utc>, keep: u64) -> Result<u64, StoreError>;

    /// Appends chunk number `seq` of a job's log, keeping the whole log
    /// within `max_bytes`: the chunk that would pass it is cut there and a
    /// line saying so ends the log; later chunks are dropped. A chunk
    /// already stored under that number is kept, so an agent that resends
    /// after a lost reply does not duplicate output.
    async fn append_job_log(
        &self,
        job: plinth_model::JobId,
        seq: u64,
        chunk: String,
        max_bytes: u64,
    ) -> Result<LogAppend, StoreError>;

    /// A job's log: its chunks in `seq` order, joined, and the bytes stored.
    async fn job_log(&self, job: plinth_model::JobId) -> Result<String, StoreError>;

    /// Like [`Store::apply`], and records each change in the audit log (by
    /// `actor`, with the object before and after) in the same transaction.
    async fn apply_audited(&self, ops: Vec<WriteOp>, actor: String) -> Result<Vec<Change>, StoreError>;

    /// Appends audit entries that are not changes (secure-value reads).
    async fn append_audit(&self, entries: Vec<plinth_model::AuditEntry>) -> Result<(), StoreError>;

    /// Audit entries in sequence order.
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<plinth_model::AuditEntry>, StoreError>;

    /// What breaks the integrity rules (`plinth_model::integrity`) among the
    /// stored objects: values of unique fields that several objects share,
    /// and references to objects that do not exist. Writes refuse to make
    /// either; a store written by an older Plinth may hold them.
    async fn integrity(&self) -> Result<Vec<Problem>, StoreError>;
}

/// A breach of the integrity rules found in stored data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Several objects of `kind` share a value of a unique field.
    Duplicate { kind: Kind, field: String, value: String, holders: Vec<String> },
    /// An object names one that does not exist.
    Dangling { object: String, field: String, target_kind: Kind, target: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Duplicate { kind, field, value, holders } => {
                write!(f, "{kind} share {field} `{value}`: {}; keep it on one of them", holders.join(", "))
            }
            Problem::Dangling { object, field, target_kind, target } => {
                write!(f, "{object}: field `{field}` names {target_kind} `{target}`, which does not exist")
            }
        }
    }
}

/// What became of a job log chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAppend {
    /// Stored whole.
    Stored,
    /// A chunk with that number was stored before; this one is ignored.
    Duplicate,
    /// Cut (or dropped): the log is at its limit, and says so.
    Truncated,
}

/// The line that ends a log cut at its limit.
pub fn truncation_note(max_bytes: u64) -> String {
    format!("\n[plinth: the log reached its limit of {max_bytes} bytes; the rest was dropped]\n")
}

/// An audit log query; every field given must match.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuditQuery {
    /// Kind, plural (`machines`).
    pub kind: Option<String>,
    pub key: Option<String>,
    /// `user:<name>`, `machine:<id>` or `server`.
    pub actor: Option<String>,
    /// Only entries with a larger sequence number.
    pub after: Option<u64>,
    /// At most this many (capped at [`MAX_PAGE`]).
    pub limit: usize,
}

/// A boot event query.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BootEventQuery {
    /// Only events of this MAC.
    pub mac: Option<plinth_model::MacAddr>,
    /// Only events recorded for this machine.
    pub machine: Option<plinth_model::MachineId>,
    /// Only events with a larger id.
    pub after: Option<u64>,
    /// At most this many (capped at [`MAX_PAGE`]).
    pub limit: usize,
}

/// The most boot credentials one machine may have outstanding (handed out,
/// not traded, not expired): each boot file fetch mints one, and the
/// oldest beyond these are revoked as a new one is stored.
pub const BOOT_TOKENS_KEPT: usize = 8;

/// Convenience calls on any store.
#[async_trait]
pub trait StoreExt: Store {
    /// Creates an object; fails with [`StoreError::Exists`] if the key is taken.
    async fn create(&self, kind: Kind, key: &str, body: Value) -> Result<Record, StoreError> {
        self.put(kind, key, body, Expect::Absent).await
    }

    /// Writes one object under a precondition.
    async fn put(&self, kind: Kind, key: &str, body: Value, expect: Expect) -> Result<Record, StoreError> {
        let mut changes = self.apply(vec![WriteOp::Put { kind, key: key.to_owned(), body, expect }]).await?;
        let c = changes.pop().ok_or_else(|| StoreError::Backend("write returned no change".into()))?;
        Ok(Record { kind, key: c.key, revision: c.revision, body: c.object })
    }

    /// Deletes one object under a precondition and returns what was deleted.
    async fn delete(&self, kind: Kind, key: &str, expect: Expect) -> Result<Record, StoreError> {
        let mut changes = self.apply(vec![WriteOp::Delete { kind, key: key.to_owned(), expect }]).await?;
        let c = changes.pop().ok_or_else(|| StoreError::Backend("delete returned no change".into()))?;
        Ok(Record { kind, key: c.key, revision: c.revision, body: c.object })
    }

    /// Reads one object as its type, with its revision.
    async fn get_as<T: plinth_model::Object>(&self, key: &str) -> Result<Option<(T, u64)>, StoreError> {
        let Some(r) = self.get(T::KIND, key).await? else { return Ok(None) };
        let object = plinth_model::decode(r.body).map_err(|e| {
            StoreError::Backend(format!("{} `{key}` is stored in a shape Plinth cannot read: {e}", T::KIND))
        })?;
        Ok(Some((object, r.revision)))
    }

    /// Reads an object, lets `change` edit it, and writes it back on
    /// condition that nobody wrote it meanwhile; a lost race is retried
    /// from a fresh read (up to [`UPDATE_RETRIES`] times). The edited object
    /// is validated as an API body would be. `change` may refuse with its
    /// own error.
    async fn update_as<T, E, F>(&self, key: &str, mut change: F) -> Result<T, E>
    where
        T: plinth_model::Object,
        E: From<StoreError> + Send,
        F: FnMut(&mut T) -> Result<(), E> + Send,
    {
        for _ in 0..UPDATE_RETRIES {
            let (mut object, revision) = self
                .get_as::<T>(key)
                .await?
                .ok_or_else(|| StoreError::NotFound { kind: T::KIND, key: key.to_owned() })?;
            change(&mut object)?;
            let body = serde_json::to_value(&object).map_err(|e| StoreError::Backend(e.to_string()))?;
            let (_, body) = plinth_model::normalize(T::KIND, body)
                .map_err(|e| StoreError::Query(format!("the change makes an invalid object: {e}")))?;
            match self.put(T::KIND, key, body, Expect::Revision(revision)).await {
                Ok(r) => {
                    return plinth_model::decode(r.body).map_err(|e| E::from(StoreError::Backend(e.to_string())));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Busy { kind: T::KIND, key: key.to_owned() }.into())
    }

    /// Stores a new boot credential, revoking the machine's oldest
    /// outstanding ones beyond [`BOOT_TOKENS_KEPT`] in the same write.
    async fn put_boot_token(
        &self,
        token: &plinth_model::Token,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        let machine = token.machine.map(|m| m.to_string()).unwrap_or_default();
        let filter = Filter { path: vec!["machine".into()], value: Value::String(machine) };
        let mut outstanding: Vec<plinth_model::Token> = self
            .list_all(Kind::Token, vec![filter])
            .await?
            .into_iter()
            .filter_map(|r| plinth_model::decode::<plinth_model::Token>(r.body).ok())
            .filter(|t| t.boot && t.uses_left != Some(0) && t.expires_at > now)
            .collect();
        outstanding.sort_by_key(|t| std::cmp::Reverse(t.expires_at));
        let body = serde_json::to_value(token).map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut ops = vec![WriteOp::Put { kind: Kind::Token, key: token.id.to_string(), body, expect: Expect::Absent }];
        for old in outstanding.iter().skip(BOOT_TOKENS_KEPT - 1) {
            ops.push(WriteOp::Delete { kind: Kind::Token, key: old.id.to_string(), expect: Expect::Any });
        }
        self.apply(ops).await.map(|_| ())
    }

    /// Lists every object of a kind matching `filters`, page by page.
    async fn list_all(&self, kind: Kind, filters: Vec<Filter>) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::new();
        let mut query = ListQuery { filters, after: None, limit: MAX_PAGE };
        loop {
            let page = self.list(kind, &query).await?;
            out.extend(page.items);
            match page.next {
                Some(next) => query.after = Some(next),
                None => return Ok(out),
            }
        }
    }
}

impl<S: Store + ?Sized> StoreExt for S {}
