//! The conformance suite on the embedded SQLite backend, plus what only a
//! file-backed store can show: reopening keeps everything.

use plinth_model::Kind;
use plinth_store::{SqliteStore, Store, StoreExt};
use serde_json::json;
use std::sync::Arc;

fn fresh() -> Arc<dyn Store> {
    let dir = tempfile::tempdir().unwrap().keep();
    Arc::new(SqliteStore::open(&dir.join("plinth.db")).unwrap())
}

plinth_store::conformance_tests!(fresh());

#[tokio::test]
async fn reopening_keeps_objects_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db").join("plinth.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.create(Kind::Template, "t", json!({"contents": "x"})).await.unwrap();
        s.put(Kind::Template, "t", json!({"contents": "y"}), plinth_store::Expect::Revision(1)).await.unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let r = s.get(Kind::Template, "t").await.unwrap().unwrap();
    assert_eq!((r.revision, r.body["contents"].as_str()), (2, Some("y")));
}

#[tokio::test]
async fn refuses_a_database_from_a_newer_plinth() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plinth.db");
    drop(SqliteStore::open(&path).unwrap());
    let c = rusqlite::Connection::open(&path).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let e = SqliteStore::open(&path).err().expect("refused");
    assert!(e.to_string().contains("newer than this Plinth"), "{e}");
}

#[tokio::test]
async fn a_database_from_before_the_lookup_index_is_indexed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plinth.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.create(Kind::Machine, "m", json!({"name": "m", "macs": ["52:54:00:00:00:0a"]})).await.unwrap();
    }
    // Back to schema version 2, as a database written before the index.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("DROP TABLE refs; DROP TABLE lookup; DROP TABLE lookup_fields; DROP TABLE job_logs; DROP INDEX boot_events_machine; ALTER TABLE boot_events DROP COLUMN machine; DROP TABLE audit; PRAGMA user_version = 2;")
        .unwrap();
    drop(c);
    let s = SqliteStore::open(&path).unwrap();
    let f = plinth_store::Filter { path: vec!["macs".into()], value: json!("52:54:00:00:00:0a") };
    let found = s.list_all(Kind::Machine, vec![f]).await.unwrap();
    assert_eq!(found.len(), 1);
}

#[tokio::test]
async fn the_audit_table_refuses_updates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plinth.db");
    let s = SqliteStore::open(&path).unwrap();
    let op = plinth_store::WriteOp::Put {
        kind: Kind::Template,
        key: "t".into(),
        body: json!({"contents": "x"}),
        expect: plinth_store::Expect::Absent,
    };
    s.apply_audited(vec![op], "user:admin".into()).await.unwrap();
    drop(s);
    let c = rusqlite::Connection::open(&path).unwrap();
    for sql in ["UPDATE audit SET actor = 'user:mallory'", "DELETE FROM audit"] {
        let e = c.execute(sql, []).unwrap_err().to_string();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    let n: i64 = c.query_row("SELECT count(*) FROM audit", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "owner-only database");
}

/// A store written before the integrity rules may hold duplicates and
/// names of objects that are gone: opening it indexes them, `integrity`
/// reports them, writes that keep them go on, and no write adds another.
#[tokio::test]
async fn a_store_with_duplicates_from_an_older_plinth_is_reported_and_not_made_worse() {
    use plinth_store::{Expect, Problem, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plinth.db");
    let mac = "52:54:00:00:dd:01";
    {
        let s = SqliteStore::open(&path).unwrap();
        s.create(Kind::Machine, "m1", json!({"name": "web-1", "macs": [mac]})).await.unwrap();
        s.create(Kind::Machine, "m2", json!({"name": "web-2", "macs": ["52:54:00:00:dd:02"]})).await.unwrap();
    }
    // What an older Plinth let through: a second holder of a MAC and of a
    // name, and a profile that does not exist. Forget the index, as a
    // database from before it.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(&format!(
        "UPDATE objects SET body = json_set(body, '$.macs', json_array('{mac}'), '$.name', 'web-1', '$.profiles', json_array('ghost'))
         WHERE key = 'm2'; DELETE FROM lookup_fields;"
    ))
    .unwrap();
    drop(c);
    let s = SqliteStore::open(&path).unwrap();
    let problems = s.integrity().await.unwrap();
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 3, "{text:#?}");
    assert!(
        problems.iter().any(|p| matches!(p, Problem::Duplicate { field, value, holders, .. }
        if field == "macs" && value == mac && holders.len() == 2)),
        "{text:#?}"
    );
    assert!(problems.iter().any(|p| matches!(p, Problem::Duplicate { field, .. } if field == "name")), "{text:#?}");
    assert!(problems.iter().any(|p| matches!(p, Problem::Dangling { target, .. } if target == "ghost")), "{text:#?}");
    assert!(text.iter().any(|t| t.contains("web-1") && t.contains("m1") && t.contains("m2")), "{text:#?}");

    // The workflow engine's writes to an affected machine go on.
    let m2 = s.get(Kind::Machine, "m2").await.unwrap().unwrap();
    let mut body = m2.body.clone();
    body["description"] = json!("still writable");
    s.put(Kind::Machine, "m2", body, Expect::Revision(m2.revision)).await.unwrap();
    // No third holder, and no new name of a missing object.
    let e = s.create(Kind::Machine, "m3", json!({"name": "web-3", "macs": [mac]})).await.unwrap_err();
    assert!(matches!(e, StoreError::Unique { .. }), "{e}");
    let e = s.create(Kind::Machine, "m3", json!({"name": "web-3", "profiles": ["ghost"]})).await.unwrap_err();
    assert!(matches!(e, StoreError::Dangling { .. }), "{e}");
    // Fixing it clears the report.
    let mut body = s.get(Kind::Machine, "m2").await.unwrap().unwrap().body;
    body["macs"] = json!(["52:54:00:00:dd:02"]);
    body["name"] = json!("web-2");
    body["profiles"] = json!([]);
    s.put(Kind::Machine, "m2", body, Expect::Any).await.unwrap();
    assert!(s.integrity().await.unwrap().is_empty());
}
