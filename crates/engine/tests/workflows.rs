//! The engine against the real SQLite store, driven the way an agent
//! drives it: ask, start, finish; reboot; lose a job; ask twice.

use plinth_engine::{EXIT_REBOOT, EXIT_STOP, Engine, Next, Outcome};
use plinth_model::{JobState, Kind, Machine, MachineId, WorkflowState};
use plinth_store::{SqliteStore, Store, StoreExt};
use serde_json::{Value, json};
use std::sync::Arc;

async fn put(store: &dyn Store, kind: Kind, v: Value) {
    let (key, body) = plinth_model::normalize(kind, v).unwrap();
    store.create(kind, &key, body).await.unwrap();
}

async fn setup() -> (Arc<dyn Store>, Engine, MachineId, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
    put(store.as_ref(), Kind::Param, json!({"name": "disk-count", "schema": {"type": "integer"}})).await;
    for bootenv in ["discovery", "debian-12"] {
        put(store.as_ref(), Kind::BootEnv, json!({"name": bootenv})).await;
    }
    for (name, retries) in [("inventory", 0), ("flaky", 1), ("fatal", 0), ("configure", 0)] {
        put(
            store.as_ref(),
            Kind::Task,
            json!({"name": name, "retries": retries, "templates": [{"name": "run", "contents": "true"}]}),
        )
        .await;
    }
    put(store.as_ref(), Kind::Stage, json!({"name": "prepare", "tasks": ["inventory", "flaky"]})).await;
    put(store.as_ref(), Kind::Stage, json!({"name": "install", "bootenv": "debian-12", "tasks": ["configure"]})).await;
    put(store.as_ref(), Kind::Stage, json!({"name": "broken", "tasks": ["fatal"]})).await;
    put(store.as_ref(), Kind::Workflow, json!({"name": "provision", "stages": ["prepare", "install"]})).await;
    put(store.as_ref(), Kind::Workflow, json!({"name": "doomed", "stages": ["broken"]})).await;
    let id = MachineId::generate();
    put(store.as_ref(), Kind::Machine, json!({"id": id, "name": "m1", "macs": ["52:54:00:00:00:01"]})).await;
    (store.clone(), Engine::new(store), id, dir)
}

async fn machine(store: &dyn Store, id: MachineId) -> Machine {
    plinth_model::decode(store.get(Kind::Machine, &id.to_string()).await.unwrap().unwrap().body).unwrap()
}

fn job_of(n: Next) -> plinth_model::Job {
    match n {
        Next::Run { job } => *job,
        other => panic!("expected a job, got {other:?}"),
    }
}

fn ok() -> Outcome {
    Outcome::default()
}

fn failed() -> Outcome {
    Outcome { exit_code: 1, reason: "exit 1".into(), ..Outcome::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_runs_to_complete_with_a_retry_a_reported_param_and_a_bootenv_switch() {
    let (store, engine, id, _dir) = setup().await;
    let boot1 = Some("boot-1");
    assert_eq!(engine.next(id, boot1).await.unwrap(), Next::Wait { state: WorkflowState::Idle });
    engine.assign(id, &"provision".parse().unwrap()).await.unwrap();

    let j = job_of(engine.next(id, boot1).await.unwrap());
    assert_eq!((j.task.as_str(), j.attempt), ("inventory", 1));
    // Duplicate delivery: asking again before starting gives the same job.
    assert_eq!(job_of(engine.next(id, boot1).await.unwrap()).id, j.id);
    engine.start(id, j.id).await.unwrap();
    let params = [("disk-count".parse().unwrap(), json!(2))].into();
    let done = engine.finish(id, j.id, Outcome { params, ..ok() }).await.unwrap();
    assert_eq!(done.state, JobState::Finished);
    // Reporting the end twice changes nothing.
    engine.finish(id, j.id, failed()).await.unwrap();
    assert_eq!(
        machine(store.as_ref(), id).await.params[&"disk-count".parse::<plinth_model::ParamName>().unwrap()],
        json!(2),
        "the task reported a param back"
    );

    // `flaky` fails once and succeeds on its retry.
    let f1 = job_of(engine.next(id, boot1).await.unwrap());
    engine.start(id, f1.id).await.unwrap();
    assert_eq!(engine.finish(id, f1.id, failed()).await.unwrap().state, JobState::Failed);
    let f2 = job_of(engine.next(id, boot1).await.unwrap());
    assert_eq!((f2.task.as_str(), f2.attempt), ("flaky", 2));
    assert_ne!(f2.id, f1.id);
    engine.start(id, f2.id).await.unwrap();
    engine.finish(id, f2.id, ok()).await.unwrap();

    // The next stage switches the bootenv: reboot until the machine comes
    // back from another boot.
    assert_eq!(engine.next(id, boot1).await.unwrap(), Next::Reboot);
    let m = machine(store.as_ref(), id).await;
    assert_eq!(
        (m.bootenv.as_str(), m.workflow_state, m.stage.as_ref().unwrap().as_str()),
        ("debian-12", WorkflowState::Rebooting, "install")
    );
    assert_eq!(engine.next(id, boot1).await.unwrap(), Next::Reboot, "still the old boot");
    let c = job_of(engine.next(id, Some("boot-2")).await.unwrap());
    assert_eq!(c.task.as_str(), "configure");
    engine.start(id, c.id).await.unwrap();
    engine.finish(id, c.id, ok()).await.unwrap();
    assert_eq!(engine.next(id, Some("boot-2")).await.unwrap(), Next::Wait { state: WorkflowState::Complete });
    let m = machine(store.as_ref(), id).await;
    assert_eq!((m.workflow_state, m.current_job, m.last_job), (WorkflowState::Complete, None, Some(c.id)));
    let jobs = store.list_all(Kind::Job, vec![]).await.unwrap();
    assert_eq!(jobs.len(), 4, "inventory, flaky twice, configure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_stops_the_workflow_until_resumed() {
    let (store, engine, id, _dir) = setup().await;
    engine.assign(id, &"doomed".parse().unwrap()).await.unwrap();
    let j = job_of(engine.next(id, None).await.unwrap());
    engine.start(id, j.id).await.unwrap();
    engine.finish(id, j.id, failed()).await.unwrap();
    assert_eq!(engine.next(id, None).await.unwrap(), Next::Wait { state: WorkflowState::Failed });
    let m = machine(store.as_ref(), id).await;
    assert_eq!(
        (m.workflow_state, m.last_job),
        (WorkflowState::Failed, Some(j.id)),
        "the failing job is one lookup away"
    );
    engine.resume(id).await.unwrap();
    let again = job_of(engine.next(id, None).await.unwrap());
    assert_eq!((again.task.as_str(), again.attempt), ("fatal", 1));
    engine.start(id, again.id).await.unwrap();
    engine.finish(id, again.id, ok()).await.unwrap();
    assert_eq!(engine.next(id, None).await.unwrap(), Next::Wait { state: WorkflowState::Complete });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_job_is_incomplete_and_a_task_can_reboot_or_pause() {
    let (store, engine, id, _dir) = setup().await;
    engine.assign(id, &"provision".parse().unwrap()).await.unwrap();
    // The agent starts a job, then restarts and asks again: that run is lost.
    let j = job_of(engine.next(id, Some("b1")).await.unwrap());
    engine.start(id, j.id).await.unwrap();
    assert_eq!(engine.next(id, Some("b1")).await.unwrap(), Next::Wait { state: WorkflowState::Failed });
    let lost: plinth_model::Job =
        plinth_model::decode(store.get(Kind::Job, &j.id.to_string()).await.unwrap().unwrap().body).unwrap();
    assert_eq!(lost.state, JobState::Incomplete);
    // inventory has no retries: the lost run was its only attempt.
    assert_eq!(machine(store.as_ref(), id).await.workflow_state, WorkflowState::Failed);
    engine.resume(id).await.unwrap();
    let j = job_of(engine.next(id, Some("b1")).await.unwrap());
    engine.start(id, j.id).await.unwrap();
    // A finish for a job that is not current is refused.
    assert!(engine.finish(id, plinth_model::JobId::generate(), ok()).await.is_err());
    // The task asks for a reboot.
    engine.finish(id, j.id, Outcome { exit_code: EXIT_REBOOT, ..ok() }).await.unwrap();
    assert_eq!(engine.next(id, Some("b1")).await.unwrap(), Next::Reboot);
    let f = job_of(engine.next(id, Some("b2")).await.unwrap());
    assert_eq!(f.task.as_str(), "flaky");
    engine.start(id, f.id).await.unwrap();
    engine.finish(id, f.id, Outcome { exit_code: EXIT_STOP, ..ok() }).await.unwrap();
    assert_eq!(engine.next(id, Some("b2")).await.unwrap(), Next::Wait { state: WorkflowState::Paused });
    engine.resume(id).await.unwrap();
    assert_eq!(engine.next(id, Some("b2")).await.unwrap(), Next::Reboot, "install switches the bootenv");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_hand_out_exactly_one_job() {
    let (store, engine, id, _dir) = setup().await;
    engine.assign(id, &"provision".parse().unwrap()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let e = engine.clone();
        tasks.push(tokio::spawn(async move { job_of(e.next(id, Some("b")).await.unwrap()).id }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(store.list_all(Kind::Job, vec![]).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart() {
    let (store, engine, id, dir) = setup().await;
    engine.assign(id, &"provision".parse().unwrap()).await.unwrap();
    let j = job_of(engine.next(id, Some("b")).await.unwrap());
    engine.start(id, j.id).await.unwrap();
    drop(engine);
    drop(store);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
    let engine = Engine::new(store.clone());
    engine.finish(id, j.id, ok()).await.unwrap();
    assert_eq!(job_of(engine.next(id, Some("b")).await.unwrap()).task.as_str(), "flaky");
}
