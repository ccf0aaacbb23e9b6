//! The conformance suite every [`Store`](crate::Store) backend must pass.
//!
//! A backend's tests call [`conformance_tests!`](crate::conformance_tests)
//! with an expression that builds a fresh, empty store; the macro expands to
//! one `#[tokio::test]` per check below, so failures name the behaviour.

use crate::{Action, Expect, Filter, ListQuery, Store, StoreError, StoreExt, WriteOp};
use plinth_model::Kind;
use serde_json::{Value, json};
use std::sync::Arc;

/// Expands to one test per conformance check, each on a fresh store built by `$make`.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            create_then_get_returns_the_body_with_revision_and_timestamps,
            create_refuses_a_taken_key,
            stale_revision_is_a_conflict_and_changes_nothing,
            delete_returns_the_object_and_frees_the_key,
            batches_are_all_or_nothing,
            list_pages_in_key_order,
            filters_match_scalars_and_array_elements,
            concurrent_creates_of_one_key_let_exactly_one_win,
            changes_are_published_after_commit,
            kinds_are_separate_namespaces,
            boot_events_append_in_order_and_filter_by_mac,
            filters_follow_updates_and_deletes,
            job_logs_keep_order_and_ignore_resent_chunks,
            job_logs_are_cut_at_their_limit_and_say_so,
            audited_writes_record_before_and_after_with_the_change,
            unique_fields_have_one_holder,
            references_must_exist_and_hold_what_they_name,
            a_deleted_job_takes_its_log_with_it,
            boot_events_are_pruned_by_age_and_count,
        );
    };
    (@each $make:expr; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store: std::sync::Arc<dyn $crate::Store> = $make;
                $crate::conformance::$name(store).await;
            }
        )*
    };
}

fn machine(name: &str) -> Value {
    json!({"name": name, "macs": []})
}

pub async fn create_then_get_returns_the_body_with_revision_and_timestamps(s: Arc<dyn Store>) {
    let r = s.create(Kind::Machine, "m1", machine("a")).await.unwrap();
    assert_eq!(r.revision, 1);
    let got = s.get(Kind::Machine, "m1").await.unwrap().expect("stored");
    assert_eq!(got.revision, 1);
    assert_eq!(got.body["name"], "a");
    assert_eq!(got.body["revision"], 1);
    assert!(got.body["created_at"].is_string());
    assert_eq!(got.body["created_at"], got.body["updated_at"]);
    assert!(s.get(Kind::Machine, "missing").await.unwrap().is_none());
}

pub async fn create_refuses_a_taken_key(s: Arc<dyn Store>) {
    s.create(Kind::Machine, "m1", machine("a")).await.unwrap();
    let e = s.create(Kind::Machine, "m1", machine("b")).await.unwrap_err();
    assert!(matches!(e, StoreError::Exists { .. }), "{e}");
    assert_eq!(s.get(Kind::Machine, "m1").await.unwrap().unwrap().body["name"], "a");
}

pub async fn stale_revision_is_a_conflict_and_changes_nothing(s: Arc<dyn Store>) {
    let r1 = s.create(Kind::Machine, "m1", machine("a")).await.unwrap();
    let r2 = s.put(Kind::Machine, "m1", machine("b"), Expect::Revision(r1.revision)).await.unwrap();
    assert_eq!(r2.revision, 2);
    assert_eq!(r2.body["created_at"], r1.body["created_at"], "created_at is kept");
    let e = s.put(Kind::Machine, "m1", machine("c"), Expect::Revision(1)).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { expected: 1, actual: 2, .. }), "{e}");
    assert_eq!(s.get(Kind::Machine, "m1").await.unwrap().unwrap().body["name"], "b");
    let e = s.put(Kind::Machine, "nope", machine("c"), Expect::Present).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
}

pub async fn delete_returns_the_object_and_frees_the_key(s: Arc<dyn Store>) {
    s.create(Kind::Machine, "m1", machine("a")).await.unwrap();
    let e = s.delete(Kind::Machine, "m1", Expect::Revision(7)).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    let d = s.delete(Kind::Machine, "m1", Expect::Any).await.unwrap();
    assert_eq!(d.body["name"], "a");
    assert!(s.get(Kind::Machine, "m1").await.unwrap().is_none());
    assert!(matches!(s.delete(Kind::Machine, "m1", Expect::Any).await, Err(StoreError::NotFound { .. })));
    let again = s.create(Kind::Machine, "m1", machine("z")).await.unwrap();
    assert_eq!(again.revision, 1, "a re-created object starts over");
}

pub async fn batches_are_all_or_nothing(s: Arc<dyn Store>) {
    s.create(Kind::Machine, "taken", machine("t")).await.unwrap();
    let ops = vec![
        WriteOp::Put { kind: Kind::Machine, key: "new".into(), body: machine("n"), expect: Expect::Absent },
        WriteOp::Delete { kind: Kind::Machine, key: "taken".into(), expect: Expect::Any },
        WriteOp::Put { kind: Kind::Machine, key: "taken".into(), body: machine("t2"), expect: Expect::Revision(1) },
    ];
    let e = s.apply(ops).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "third op sees the second's delete: {e}");
    assert!(s.get(Kind::Machine, "new").await.unwrap().is_none(), "first op rolled back");
    assert!(s.get(Kind::Machine, "taken").await.unwrap().is_some(), "second op rolled back");

    let ok = s
        .apply(vec![
            WriteOp::Put { kind: Kind::Machine, key: "a".into(), body: machine("a"), expect: Expect::Absent },
            WriteOp::Put { kind: Kind::Machine, key: "a".into(), body: machine("a2"), expect: Expect::Revision(1) },
        ])
        .await
        .unwrap();
    assert_eq!(ok.len(), 2);
    assert_eq!(ok[1].revision, 2);
}

pub async fn list_pages_in_key_order(s: Arc<dyn Store>) {
    for i in (0..25).rev() {
        s.create(Kind::Machine, &format!("m{i:02}"), machine(&format!("n{i}"))).await.unwrap();
    }
    let mut q = ListQuery { limit: 10, ..Default::default() };
    let mut seen = Vec::new();
    for _ in 0..5 {
        let page = s.list(Kind::Machine, &q).await.unwrap();
        seen.extend(page.items.iter().map(|r| r.key.clone()));
        match page.next {
            Some(n) => q.after = Some(n),
            None => break,
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("m{i:02}")).collect();
    assert_eq!(seen, want);
    assert_eq!(s.list_all(Kind::Machine, vec![]).await.unwrap().len(), 25);
}

pub async fn filters_match_scalars_and_array_elements(s: Arc<dyn Store>) {
    let bodies = [
        (
            "a",
            json!({"bootenv": "discovery", "macs": ["52:54:00:00:00:01"], "runnable": true, "n": 1, "os": {"family": "debian"}}),
        ),
        (
            "b",
            json!({"bootenv": "local", "macs": ["52:54:00:00:00:02", "52:54:00:00:00:03"], "runnable": false, "n": 2, "os": {"family": "redhat"}}),
        ),
        ("c", json!({"bootenv": "local", "macs": [], "runnable": true, "n": 2, "workflow": null})),
    ];
    for b in ["discovery", "local"] {
        s.create(Kind::BootEnv, b, json!({"name": b})).await.unwrap();
    }
    for (k, b) in bodies {
        s.create(Kind::Machine, k, b).await.unwrap();
    }
    async fn keys_of(s: &Arc<dyn Store>, filters: Vec<(&str, Value)>) -> Vec<String> {
        let filters = filters
            .into_iter()
            .map(|(p, v)| Filter { path: p.split('.').map(str::to_owned).collect(), value: v })
            .collect();
        s.list_all(Kind::Machine, filters).await.unwrap().into_iter().map(|r| r.key).collect()
    }
    let keys = |f| keys_of(&s, f);
    assert_eq!(keys(vec![("bootenv", json!("local"))]).await, ["b", "c"]);
    assert_eq!(keys(vec![("macs", json!("52:54:00:00:00:03"))]).await, ["b"]);
    assert_eq!(keys(vec![("runnable", json!(true))]).await, ["a", "c"]);
    assert_eq!(keys(vec![("n", json!(2)), ("runnable", json!(true))]).await, ["c"]);
    assert_eq!(keys(vec![("os.family", json!("debian"))]).await, ["a"]);
    assert_eq!(keys(vec![("workflow", Value::Null)]).await, ["a", "b", "c"], "missing and null both match null");
    assert!(keys(vec![("bootenv", json!(1))]).await.is_empty(), "types are not coerced");
    let bad = Filter { path: vec!["a'b".into()], value: json!(1) };
    assert!(matches!(
        s.list(Kind::Machine, &ListQuery { filters: vec![bad], after: None, limit: 5 }).await,
        Err(StoreError::Query(_))
    ));
}

pub async fn concurrent_creates_of_one_key_let_exactly_one_win(s: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { s.create(Kind::Lease, "10.0.0.5", json!({"mac": i})).await }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::Exists { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(wins, 1);
}

pub async fn changes_are_published_after_commit(s: Arc<dyn Store>) {
    let mut rx = s.subscribe();
    s.create(Kind::Template, "t", json!({"contents": "x"})).await.unwrap();
    let _ = s.create(Kind::Template, "t", json!({"contents": "y"})).await.unwrap_err();
    s.delete(Kind::Template, "t", Expect::Any).await.unwrap();
    let c1 = rx.recv().await.unwrap();
    assert_eq!((c1.kind, c1.action, c1.key.as_str(), c1.revision), (Kind::Template, Action::Created, "t", 1));
    let c2 = rx.recv().await.unwrap();
    assert_eq!(c2.action, Action::Deleted, "the failed create published nothing");
    assert_eq!(c2.object["contents"], "x");
}

pub async fn kinds_are_separate_namespaces(s: Arc<dyn Store>) {
    s.create(Kind::Template, "same", json!({"contents": "t"})).await.unwrap();
    s.create(Kind::BootEnv, "same", json!({"kernel": "k"})).await.unwrap();
    assert_eq!(s.list_all(Kind::Template, vec![]).await.unwrap().len(), 1);
    assert_eq!(s.get(Kind::BootEnv, "same").await.unwrap().unwrap().body["kernel"], "k");
}

pub async fn boot_events_append_in_order_and_filter_by_mac(s: Arc<dyn Store>) {
    use plinth_model::BootEvent;
    let mac: plinth_model::MacAddr = "52:54:00:00:00:01".parse().unwrap();
    let ev = |mac: Option<plinth_model::MacAddr>, detail: &str| BootEvent {
        id: 0,
        at: plinth_model::now(),
        mac,
        address: Some("10.0.0.5".parse().unwrap()),
        machine: None,
        service: "dhcp".into(),
        detail: detail.into(),
    };
    s.append_boot_events(vec![ev(Some(mac), "one"), ev(None, "other"), ev(Some(mac), "two")]).await.unwrap();
    s.append_boot_events(vec![ev(Some(mac), "three")]).await.unwrap();
    let all = s.boot_events(&crate::BootEventQuery { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    let mine =
        s.boot_events(&crate::BootEventQuery { mac: Some(mac), limit: 100, ..Default::default() }).await.unwrap();
    let details: Vec<&str> = mine.iter().map(|e| e.detail.as_str()).collect();
    assert_eq!(details, ["one", "two", "three"]);
    let later = s
        .boot_events(&crate::BootEventQuery {
            mac: Some(mac),
            limit: 100,
            after: Some(mine[0].id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(later.len(), 2);
    assert_eq!(later[0].address, Some("10.0.0.5".parse().unwrap()));
    let machine = plinth_model::MachineId::generate();
    s.append_boot_events(vec![BootEvent { machine: Some(machine), mac: None, ..ev(None, "job started") }])
        .await
        .unwrap();
    let theirs = s
        .boot_events(&crate::BootEventQuery { machine: Some(machine), limit: 100, ..Default::default() })
        .await
        .unwrap();
    assert_eq!((theirs.len(), theirs[0].machine, theirs[0].detail.as_str()), (1, Some(machine), "job started"));
}

/// Filters see every write at once, whatever a backend keeps to answer
/// them quickly (an index on MACs, say): updates move an object between
/// results, deletes drop it, a failed batch changes nothing.
pub async fn filters_follow_updates_and_deletes(s: Arc<dyn Store>) {
    async fn by(s: &Arc<dyn Store>, kind: Kind, field: &str, v: &str) -> Vec<String> {
        let f = Filter { path: vec![field.to_owned()], value: json!(v) };
        s.list_all(kind, vec![f]).await.unwrap().into_iter().map(|r| r.key).collect()
    }
    let mac = "52:54:00:00:aa:01";
    s.create(Kind::Machine, "m1", json!({"name": "one", "macs": [mac, "52:54:00:00:aa:02"]})).await.unwrap();
    s.create(Kind::Lease, "10.0.0.5", json!({"mac": mac, "state": "bound"})).await.unwrap();
    assert_eq!(by(&s, Kind::Machine, "macs", mac).await, ["m1"]);
    assert_eq!(by(&s, Kind::Machine, "name", "one").await, ["m1"]);
    assert_eq!(by(&s, Kind::Lease, "mac", mac).await, ["10.0.0.5"]);
    assert!(by(&s, Kind::Lease, "macs", mac).await.is_empty(), "fields are per kind");

    s.put(Kind::Machine, "m1", json!({"name": "uno", "macs": ["52:54:00:00:aa:02"]}), Expect::Revision(1))
        .await
        .unwrap();
    assert!(by(&s, Kind::Machine, "macs", mac).await.is_empty(), "the removed MAC no longer matches");
    assert!(by(&s, Kind::Machine, "name", "one").await.is_empty());
    assert_eq!(by(&s, Kind::Machine, "macs", "52:54:00:00:aa:02").await, ["m1"]);

    let failed = s
        .apply(vec![
            WriteOp::Put {
                kind: Kind::Machine,
                key: "m2".into(),
                body: json!({"name": "two", "macs": [mac]}),
                expect: Expect::Absent,
            },
            WriteOp::Put {
                kind: Kind::Machine,
                key: "m1".into(),
                body: json!({"name": "x"}),
                expect: Expect::Revision(9),
            },
        ])
        .await;
    assert!(failed.is_err());
    assert!(by(&s, Kind::Machine, "macs", mac).await.is_empty(), "a failed batch left no trace");

    s.delete(Kind::Machine, "m1", Expect::Any).await.unwrap();
    s.delete(Kind::Lease, "10.0.0.5", Expect::Any).await.unwrap();
    assert!(by(&s, Kind::Machine, "macs", "52:54:00:00:aa:02").await.is_empty());
    assert!(by(&s, Kind::Lease, "mac", mac).await.is_empty());
}

/// Job log chunks come back in sequence order whatever order they arrived
/// in; a chunk resent under the same number is not stored twice.
pub async fn job_logs_keep_order_and_ignore_resent_chunks(s: Arc<dyn Store>) {
    let job = plinth_model::JobId::generate();
    let other = plinth_model::JobId::generate();
    use crate::LogAppend;
    assert_eq!(s.append_job_log(job, 1, "two\n".into(), 1000).await.unwrap(), LogAppend::Stored);
    assert_eq!(s.append_job_log(job, 0, "one\n".into(), 1000).await.unwrap(), LogAppend::Stored);
    assert_eq!(s.append_job_log(job, 1, "two again\n".into(), 1000).await.unwrap(), LogAppend::Duplicate);
    assert_eq!(s.append_job_log(other, 0, "elsewhere".into(), 1000).await.unwrap(), LogAppend::Stored);
    assert_eq!(s.job_log(job).await.unwrap(), "one\ntwo\n");
    assert_eq!(s.job_log(plinth_model::JobId::generate()).await.unwrap(), "");
}

/// A job's log stays within its limit: the chunk that would pass it is cut
/// there (on a character boundary), a line says so, and later chunks are
/// dropped.
pub async fn job_logs_are_cut_at_their_limit_and_say_so(s: Arc<dyn Store>) {
    use crate::LogAppend;
    let job = plinth_model::JobId::generate();
    assert_eq!(s.append_job_log(job, 0, "0123456789".into(), 15).await.unwrap(), LogAppend::Stored);
    assert_eq!(s.append_job_log(job, 1, "abcdéfgh".into(), 15).await.unwrap(), LogAppend::Truncated);
    assert_eq!(s.append_job_log(job, 2, "more".into(), 15).await.unwrap(), LogAppend::Truncated);
    assert_eq!(s.append_job_log(job, 1, "abcdéfgh".into(), 15).await.unwrap(), LogAppend::Duplicate);
    assert_eq!(s.job_log(job).await.unwrap(), format!("0123456789abcd{}", crate::truncation_note(15)));
}

pub async fn audited_writes_record_before_and_after_with_the_change(s: Arc<dyn Store>) {
    use crate::AuditQuery;
    let put = |key: &str, body: Value, expect| WriteOp::Put { kind: Kind::User, key: key.into(), body, expect };
    s.apply_audited(vec![put("u", json!({"name": "u", "password_hash": "h1"}), Expect::Absent)], "user:admin".into())
        .await
        .unwrap();
    s.apply_audited(
        vec![put("u", json!({"name": "u", "description": "d", "password_hash": "h2"}), Expect::Revision(1))],
        "user:bob".into(),
    )
    .await
    .unwrap();
    // A failed batch leaves no audit entry.
    let failed = s.apply_audited(vec![put("u", json!({"name": "u"}), Expect::Revision(9))], "user:admin".into()).await;
    assert!(failed.is_err());
    // Unaudited writes leave none either.
    s.apply(vec![put("v", json!({"name": "v"}), Expect::Absent)]).await.unwrap();
    s.apply_audited(
        vec![WriteOp::Delete { kind: Kind::User, key: "u".into(), expect: Expect::Any }],
        "user:admin".into(),
    )
    .await
    .unwrap();
    let all = s.audit(&AuditQuery { limit: 100, ..Default::default() }).await.unwrap();
    let summary: Vec<(&str, &str, &str)> =
        all.iter().map(|e| (e.actor.as_str(), e.action.as_str(), e.key.as_str())).collect();
    assert_eq!(summary, [("user:admin", "created", "u"), ("user:bob", "updated", "u"), ("user:admin", "deleted", "u")]);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(all[1].before.as_ref().unwrap()["description"], Value::Null);
    assert_eq!(all[1].after.as_ref().unwrap()["description"], "d");
    assert!(all[2].after.is_none() && all[2].before.as_ref().unwrap()["name"] == "u");
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains("h1") && !text.contains("h2"), "server-only fields are not kept: {text}");
    let bob = s.audit(&AuditQuery { actor: Some("user:bob".into()), limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(bob.len(), 1);
    let later = s.audit(&AuditQuery { after: Some(all[0].seq), limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!(later.iter().map(|e| e.seq).collect::<Vec<_>>(), [all[1].seq]);
    s.append_audit(vec![plinth_model::AuditEntry::secure_read(
        "address:10.0.0.9".into(),
        plinth_model::MachineId::generate(),
        "x".into(),
    )])
    .await
    .unwrap();
    let reads = s.audit(&AuditQuery { kind: Some("machines".into()), limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].action, "secure-read");
}

/// A MAC belongs to one machine, a name to one machine, an address to one
/// reservation; the check runs when the whole batch is done, so a batch
/// may move a value from one object to another in either order.
pub async fn unique_fields_have_one_holder(s: Arc<dyn Store>) {
    let (x, y) = ("52:54:00:00:bb:01", "52:54:00:00:bb:02");
    s.create(Kind::Machine, "m1", json!({"name": "web-1", "macs": [x]})).await.unwrap();
    let e = s.create(Kind::Machine, "m2", json!({"name": "web-2", "macs": [y, x]})).await.unwrap_err();
    match &e {
        StoreError::Unique { field, value, holder, .. } => {
            assert_eq!((field.as_str(), value.as_str()), ("macs", x));
            assert_eq!(holder, "machines `web-1` (m1)", "names the holder");
        }
        other => panic!("expected a uniqueness error, got {other}"),
    }
    assert!(e.to_string().contains("web-1"), "{e}");
    assert!(s.get(Kind::Machine, "m2").await.unwrap().is_none(), "nothing written");
    let e = s.create(Kind::Machine, "m2", json!({"name": "web-1", "macs": [y]})).await.unwrap_err();
    assert!(matches!(&e, StoreError::Unique { field, .. } if field == "name"), "{e}");
    s.create(Kind::Machine, "m2", json!({"name": "web-2", "macs": [y]})).await.unwrap();
    // Rewriting an object with the values it has is no conflict.
    s.put(Kind::Machine, "m1", json!({"name": "web-1", "macs": [x], "d": 1}), Expect::Any).await.unwrap();
    // Moving a MAC: give it first, then take it away, in one batch.
    let put = |key: &str, body: Value| WriteOp::Put { kind: Kind::Machine, key: key.into(), body, expect: Expect::Any };
    s.apply(vec![put("m2", json!({"name": "web-2", "macs": [y, x]})), put("m1", json!({"name": "web-1", "macs": []}))])
        .await
        .unwrap();
    let f = Filter { path: vec!["macs".into()], value: json!(x) };
    let holders: Vec<String> = s.list_all(Kind::Machine, vec![f]).await.unwrap().into_iter().map(|r| r.key).collect();
    assert_eq!(holders, ["m2"]);
    // Swapping names in one batch.
    s.apply(vec![put("m1", json!({"name": "web-2", "macs": []})), put("m2", json!({"name": "web-1", "macs": [y, x]}))])
        .await
        .unwrap();
    // A deleted machine frees its values.
    s.delete(Kind::Machine, "m2", Expect::Any).await.unwrap();
    s.create(Kind::Machine, "m3", json!({"name": "web-1", "macs": [x, y]})).await.unwrap();

    s.create(Kind::Reservation, "52:54:00:00:cc:01", json!({"mac": "52:54:00:00:cc:01", "address": "10.0.0.10"}))
        .await
        .unwrap();
    let e = s
        .create(Kind::Reservation, "52:54:00:00:cc:02", json!({"mac": "52:54:00:00:cc:02", "address": "10.0.0.10"}))
        .await
        .unwrap_err();
    assert!(matches!(&e, StoreError::Unique { field, .. } if field == "address"), "{e}");
    assert!(s.integrity().await.unwrap().is_empty(), "writes never make duplicates");
}

/// A write may not name an object that does not exist; an object that is
/// named may not be deleted. Both are judged when the batch is done.
pub async fn references_must_exist_and_hold_what_they_name(s: Arc<dyn Store>) {
    let e = s.create(Kind::Machine, "m1", json!({"name": "a", "bootenv": "debian"})).await.unwrap_err();
    match &e {
        StoreError::Dangling { field, target_kind, target, .. } => {
            assert_eq!((field.as_str(), *target_kind, target.as_str()), ("bootenv", Kind::BootEnv, "debian"));
        }
        other => panic!("expected a dangling reference, got {other}"),
    }
    // The target may come later in the same batch.
    let put = |kind, key: &str, body: Value| WriteOp::Put { kind, key: key.into(), body, expect: Expect::Absent };
    s.apply(vec![
        put(Kind::Machine, "m1", json!({"name": "a", "bootenv": "debian", "profiles": ["rack"], "params": {"ntp": 1}})),
        put(Kind::BootEnv, "debian", json!({"name": "debian"})),
        put(Kind::Profile, "rack", json!({"name": "rack"})),
        put(Kind::Param, "ntp", json!({"name": "ntp"})),
    ])
    .await
    .unwrap();
    let e = s.delete(Kind::Profile, "rack", Expect::Any).await.unwrap_err();
    match &e {
        StoreError::Referenced { by, .. } => assert_eq!(by, &["machines `a` (m1) (field `profiles[0]`)"]),
        other => panic!("expected a held reference, got {other}"),
    }
    let e = s.delete(Kind::Param, "ntp", Expect::Any).await.unwrap_err();
    assert!(e.to_string().contains("params.ntp"), "{e}");
    // Taking the reference away first (in the same batch) frees it.
    s.apply(vec![
        WriteOp::Delete { kind: Kind::Profile, key: "rack".into(), expect: Expect::Any },
        WriteOp::Put {
            kind: Kind::Machine,
            key: "m1".into(),
            body: json!({"name": "a", "bootenv": "debian", "params": {"ntp": 1}}),
            expect: Expect::Any,
        },
    ])
    .await
    .unwrap();
    // A job's task is checked when written but does not hold the task.
    s.create(Kind::Task, "t", json!({"name": "t"})).await.unwrap();
    let e = s.create(Kind::Job, "j0", json!({"machine": "nope", "task": "t"})).await.unwrap_err();
    assert!(matches!(&e, StoreError::Dangling { field, .. } if field == "machine"), "{e}");
    let e = s.create(Kind::Job, "j0", json!({"machine": "m1", "task": "nope"})).await.unwrap_err();
    assert!(matches!(&e, StoreError::Dangling { field, .. } if field == "task"), "{e}");
    s.create(Kind::Job, "j1", json!({"machine": "m1", "task": "t"})).await.unwrap();
    s.delete(Kind::Task, "t", Expect::Any).await.unwrap();
    // The job still holds its machine.
    let e = s.delete(Kind::Machine, "m1", Expect::Any).await.unwrap_err();
    assert!(matches!(e, StoreError::Referenced { .. }), "{e}");
    s.apply(vec![
        WriteOp::Delete { kind: Kind::Machine, key: "m1".into(), expect: Expect::Any },
        WriteOp::Delete { kind: Kind::Job, key: "j1".into(), expect: Expect::Any },
    ])
    .await
    .unwrap();
    // A delete and re-create of a named object in one batch is no breach.
    s.create(Kind::Machine, "m2", json!({"name": "b", "bootenv": "debian"})).await.unwrap();
    s.apply(vec![
        WriteOp::Delete { kind: Kind::BootEnv, key: "debian".into(), expect: Expect::Any },
        put(Kind::BootEnv, "debian", json!({"name": "debian", "description": "again"})),
    ])
    .await
    .unwrap();
    assert!(s.integrity().await.unwrap().is_empty());
}

pub async fn a_deleted_job_takes_its_log_with_it(s: Arc<dyn Store>) {
    s.create(Kind::Machine, "m", json!({"name": "m"})).await.unwrap();
    s.create(Kind::Task, "t", json!({"name": "t"})).await.unwrap();
    let job = plinth_model::JobId::generate();
    s.create(Kind::Job, &job.to_string(), json!({"machine": "m", "task": "t"})).await.unwrap();
    s.append_job_log(job, 0, "output".into(), 1000).await.unwrap();
    s.delete(Kind::Job, &job.to_string(), Expect::Any).await.unwrap();
    assert_eq!(s.job_log(job).await.unwrap(), "");
}

/// Boot events are kept for a time and up to a count: older ones, and all
/// but the newest `keep`, are pruned.
pub async fn boot_events_are_pruned_by_age_and_count(s: Arc<dyn Store>) {
    use plinth_model::BootEvent;
    let ev = |at: chrono::DateTime<chrono::Utc>, detail: &str| BootEvent {
        id: 0,
        at,
        mac: None,
        address: None,
        machine: None,
        service: "http".into(),
        detail: detail.into(),
    };
    let now = plinth_model::now();
    let old = now - chrono::Duration::days(40);
    let mut batch = vec![ev(old, "old-1"), ev(old, "old-2")];
    batch.extend((0..10).map(|i| ev(now, &format!("new-{i}"))));
    s.append_boot_events(batch).await.unwrap();
    let q = crate::BootEventQuery { limit: 100, ..Default::default() };
    assert_eq!(s.prune_boot_events(now - chrono::Duration::days(30), 1000).await.unwrap(), 2);
    assert_eq!(s.boot_events(&q).await.unwrap().len(), 10);
    assert_eq!(s.prune_boot_events(now - chrono::Duration::days(30), 4).await.unwrap(), 6);
    let left: Vec<String> = s.boot_events(&q).await.unwrap().into_iter().map(|e| e.detail).collect();
    assert_eq!(left, ["new-6", "new-7", "new-8", "new-9"], "the newest are kept");
}
