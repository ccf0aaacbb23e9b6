//! The workflow engine. A workflow is stages; a stage is an optional
//! bootenv, tasks and params; a job is one run of one task on one machine.
//! The engine keeps each machine's place (`workflow_state`, `stage`,
//! `task_index`, `task_attempts`, `current_job`) on the machine itself and
//! changes it only in store batches conditioned on the machine's revision,
//! so two requests can never hand out two jobs, and a server restart loses
//! nothing: every decision is in the store before it is answered.
//!
//! Task exit codes: `0` success; [`EXIT_REBOOT`] success, then reboot;
//! [`EXIT_POWEROFF`] success, then power off; [`EXIT_STOP`] success, then
//! pause the workflow; anything else is a failure (retried up to the task's
//! `retries`, then the workflow stops as `failed`).
#![forbid(unsafe_code)]

pub mod identity;

use plinth_model::{
    Job, JobId, JobState, Kind, Machine, MachineId, Name, ParamValues, Stage, Task, Workflow, WorkflowState,
};
use plinth_store::{Expect, Store, StoreError, StoreExt, WriteOp};
use serde::Serialize;
use std::sync::Arc;

/// Task exit code: done, reboot the machine.
pub const EXIT_REBOOT: i32 = 64;
/// Task exit code: done, power the machine off.
pub const EXIT_POWEROFF: i32 = 65;
/// Task exit code: done, pause the workflow here.
pub const EXIT_STOP: i32 = 66;

/// How many times an operation retries after losing a race on the machine.
const RACE_RETRIES: usize = 20;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the agent should do next.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Next {
    /// Run this job.
    Run { job: Box<Job> },
    /// Reboot (into the bootenv the machine now has).
    Reboot,
    /// Nothing to do now; ask again later (or when told by the event stream).
    Wait { state: WorkflowState },
}

/// How a job ended, as the agent reports it.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The task's exit code (the agent reports a timeout as a failure code).
    pub exit_code: i32,
    /// Why, for humans (`timed out after 60 s`).
    pub reason: String,
    /// Param values the task reports back, set on the machine.
    pub params: ParamValues,
}

/// The workflows, stages and tasks one machine runs by: the installed ones,
/// or, where the machine is pinned to an earlier version of a content pack
/// (a canary upgrade holding it back), that version's, so its stage lists,
/// bootenvs and retry policies are the ones its renders see.
struct Defs<'a> {
    engine: &'a Engine,
    pinned: Vec<(Kind, String, serde_json::Value)>,
}

impl Defs<'_> {
    async fn get<T: plinth_model::Object>(&self, kind: Kind, key: &str) -> Result<T, EngineError> {
        match self.pinned.iter().find(|(k, name, _)| *k == kind && name == key) {
            Some((_, _, body)) => decode(body.clone()),
            None => Ok(self.engine.get::<T>(kind, key).await?.0),
        }
    }
}

/// The workflow engine over a store.
#[derive(Clone)]
pub struct Engine {
    store: Arc<dyn Store>,
}

fn decode<T: plinth_model::Object>(v: serde_json::Value) -> Result<T, EngineError> {
    plinth_model::decode(v).map_err(|e| EngineError::Invalid(format!("stored object is invalid: {e}")))
}

fn body<T: Serialize>(v: &T) -> Result<serde_json::Value, EngineError> {
    serde_json::to_value(v).map_err(|e| EngineError::Invalid(e.to_string()))
}

impl Engine {
    /// An engine over `store`.
    pub fn new(store: Arc<dyn Store>) -> Engine {
        Engine { store }
    }

    /// Records a step of the machine's workflow in its timeline. A failure
    /// to record is not a failure of the step.
    async fn note(&self, m: &Machine, detail: String) {
        let _ = self.store.append_boot_events(vec![plinth_model::BootEvent::about(m, "workflow", detail)]).await;
    }

    async fn get<T: plinth_model::Object>(&self, kind: Kind, key: &str) -> Result<(T, u64), EngineError> {
        self.store.get_as::<T>(key).await?.ok_or_else(|| EngineError::NotFound(format!("{kind} `{key}`")))
    }

    /// The definitions `m` runs by (see [`Defs`]).
    async fn defs(&self, m: &Machine) -> Result<Defs<'_>, EngineError> {
        let pinned = if plinth_render::pins::is_pinned(m) {
            plinth_render::pins::pinned_objects(self.store.as_ref(), m).await.map_err(|e| match e {
                plinth_render::LoadError::Store(e) => EngineError::Store(e),
                e => EngineError::Conflict(e.to_string()),
            })?
        } else {
            Vec::new()
        };
        Ok(Defs { engine: self, pinned })
    }

    /// Runs `attempt` until it commits (`Some`), at most [`RACE_RETRIES`]
    /// times: each attempt reads afresh, and `None` means it lost a race on
    /// the machine's revision.
    async fn retrying<T, F: Future<Output = Result<Option<T>, EngineError>>>(
        &self,
        mut attempt: impl FnMut() -> F,
    ) -> Result<T, EngineError> {
        for _ in 0..RACE_RETRIES {
            if let Some(done) = attempt().await? {
                return Ok(done);
            }
        }
        Err(EngineError::Conflict("the machine kept changing; try again".into()))
    }

    /// Writes `machine` (at `revision`) and `others` in one batch; `Ok(false)`
    /// when another request changed the machine first.
    async fn commit(&self, machine: &mut Machine, revision: u64, others: Vec<WriteOp>) -> Result<bool, EngineError> {
        // When the machine was told to reboot, for the server's watchdog.
        if machine.workflow_state == WorkflowState::Rebooting {
            machine.rebooting_since.get_or_insert_with(plinth_model::now);
        } else {
            machine.rebooting_since = None;
        }
        let mut ops = others;
        ops.push(WriteOp::Put {
            kind: Kind::Machine,
            key: machine.id.to_string(),
            body: body(machine)?,
            expect: Expect::Revision(revision),
        });
        match self.store.apply(ops).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { kind: Kind::Machine, .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts `workflow` on a machine from its first stage (switching to
    /// that stage's bootenv, if it names one).
    pub async fn assign(&self, id: MachineId, workflow: &Name) -> Result<Machine, EngineError> {
        self.retrying(|| self.assign_once(id, workflow, false)).await
    }

    /// [`Engine::assign`] for a machine about to be booted afresh (a
    /// rebuild through its BMC): the workflow waits for the machine's next
    /// boot, and its agent in the current boot is told to reboot, never
    /// given the workflow's jobs.
    pub async fn assign_for_reboot(&self, id: MachineId, workflow: &Name) -> Result<Machine, EngineError> {
        self.retrying(|| self.assign_once(id, workflow, true)).await
    }

    /// Goes on after a failure or a pause: the failed task runs again.
    pub async fn resume(&self, id: MachineId) -> Result<Machine, EngineError> {
        self.retrying(|| self.resume_once(id)).await
    }

    /// Sets stage number `index` of `wf` as current: its bootenv (and a
    /// reboot when that changes what the machine boots), or `complete`
    /// past the last stage.
    async fn enter_stage(defs: &Defs<'_>, m: &mut Machine, wf: &Workflow, index: usize) -> Result<(), EngineError> {
        m.task_index = 0;
        m.task_attempts = 0;
        let Some(name) = wf.stages.get(index) else {
            m.workflow_state = WorkflowState::Complete;
            return Ok(());
        };
        let stage = defs.get::<Stage>(Kind::Stage, name.as_str()).await?;
        m.stage = Some(stage.name.clone());
        let power_boots = stage.power.is_some_and(plinth_model::PowerAction::boots);
        if let Some(b) = &stage.bootenv
            && *b != m.bootenv
        {
            m.bootenv = b.clone();
            m.workflow_state = WorkflowState::Rebooting;
        }
        // The stage's power action is the server's to carry out through
        // the BMC; one that boots the machine means waiting for its agent.
        if let Some(action) = stage.power {
            m.power_request = Some(plinth_model::PowerRequest {
                action,
                reason: format!("stage `{}`", stage.name),
                at: plinth_model::now(),
            });
            if power_boots {
                m.workflow_state = WorkflowState::Rebooting;
            }
        }
        if m.workflow_state == WorkflowState::Rebooting {
            m.reboot_from = m.boot_id.clone();
            m.rebooting_since = Some(plinth_model::now());
        }
        Ok(())
    }

    /// What the agent of a machine that must boot afresh is told: reboot
    /// itself, or wait while the server powers it through its BMC.
    fn reboot_or_wait(m: &Machine) -> Next {
        if m.power_request.as_ref().is_some_and(|p| p.action.boots()) {
            Next::Wait { state: WorkflowState::Rebooting }
        } else {
            Next::Reboot
        }
    }

    /// Marks a job ended (if it has not) and returns the write.
    async fn end_job(&self, id: JobId, state: JobState, reason: &str) -> Result<Vec<WriteOp>, EngineError> {
        let Some(r) = self.store.get(Kind::Job, &id.to_string()).await? else { return Ok(Vec::new()) };
        let mut job: Job = decode(r.body)?;
        if job.state.ended() {
            return Ok(Vec::new());
        }
        job.state = state;
        job.ended_at = Some(plinth_model::now());
        job.reason = reason.to_owned();
        Ok(vec![WriteOp::Put {
            kind: Kind::Job,
            key: id.to_string(),
            body: body(&job)?,
            expect: Expect::Revision(r.revision),
        }])
    }

    /// What the machine's agent should do now. `boot_id` is the agent's
    /// current boot: after a reboot it differs and the workflow goes on.
    /// Asking twice without finishing returns the same job; asking while a
    /// job is running means the agent lost it (restarted), so that run is
    /// `incomplete` and counts as a failed attempt.
    pub async fn next(&self, id: MachineId, boot_id: Option<&str>) -> Result<Next, EngineError> {
        self.retrying(|| self.next_once(id, boot_id)).await
    }

    /// One attempt of [`Engine::assign`]: `None` when it lost a race.
    async fn assign_once(&self, id: MachineId, workflow: &Name, reboot: bool) -> Result<Option<Machine>, EngineError> {
        let (mut m, rev) = self.get::<Machine>(Kind::Machine, &id.to_string()).await?;
        let defs = self.defs(&m).await?;
        let wf = defs.get::<Workflow>(Kind::Workflow, workflow.as_str()).await?;
        for s in &wf.stages {
            defs.get::<Stage>(Kind::Stage, s.as_str()).await?;
        }
        if m.locked {
            return Err(EngineError::Conflict(format!("machine `{}` is locked", m.name)));
        }
        let mut others = Vec::new();
        if let Some(j) = m.current_job {
            others.extend(self.end_job(j, JobState::Incomplete, "the machine was given another workflow").await?);
        }
        m.workflow = Some(wf.name.clone());
        m.stage = None;
        m.current_job = None;
        m.workflow_state = WorkflowState::Running;
        Self::enter_stage(&defs, &mut m, &wf, 0).await?;
        if reboot && m.workflow_state == WorkflowState::Running {
            m.workflow_state = WorkflowState::Rebooting;
            m.reboot_from = m.boot_id.clone();
            m.rebooting_since = Some(plinth_model::now());
        }
        if self.commit(&mut m, rev, others).await? {
            let stage = m.stage.as_ref().map(|s| s.to_string()).unwrap_or_default();
            let mut detail = format!("workflow `{}` assigned; stage `{stage}`", wf.name);
            if m.workflow_state == WorkflowState::Rebooting {
                detail.push_str(&format!("; bootenv `{}`, reboot", m.bootenv));
            }
            self.note(&m, detail).await;
            return Ok(Some(m));
        }
        Ok(None)
    }

    /// One attempt of [`Engine::resume`]: `None` when it lost a race.
    async fn resume_once(&self, id: MachineId) -> Result<Option<Machine>, EngineError> {
        let (mut m, rev) = self.get::<Machine>(Kind::Machine, &id.to_string()).await?;
        if m.workflow.is_none() {
            return Err(EngineError::Conflict(format!("machine `{}` has no workflow", m.name)));
        }
        if !matches!(m.workflow_state, WorkflowState::Failed | WorkflowState::Paused) {
            return Ok(Some(m));
        }
        m.workflow_state = WorkflowState::Running;
        m.task_attempts = 0;
        if self.commit(&mut m, rev, Vec::new()).await? {
            self.note(&m, "workflow resumed".into()).await;
            return Ok(Some(m));
        }
        Ok(None)
    }

    /// One attempt of [`Engine::next`]: `None` when it lost a race.
    async fn next_once(&self, id: MachineId, boot_id: Option<&str>) -> Result<Option<Next>, EngineError> {
        let (mut m, rev) = self.get::<Machine>(Kind::Machine, &id.to_string()).await?;
        let mut others = Vec::new();
        let seen_boot = boot_id.map(str::to_owned);
        let new_boot = seen_boot.is_some() && seen_boot != m.boot_id;
        if new_boot {
            m.boot_id = seen_boot.clone();
        }
        match m.workflow_state {
            WorkflowState::Rebooting => {
                let still_old = m.reboot_from.is_some() && m.reboot_from == seen_boot;
                if still_old || seen_boot.is_none() {
                    if new_boot && !self.commit(&mut m, rev, others).await? {
                        return Ok(None);
                    }
                    return Ok(Some(Self::reboot_or_wait(&m)));
                }
                m.workflow_state = WorkflowState::Running;
                m.reboot_from = None;
                self.note(&m, format!("agent back from a reboot (boot {})", seen_boot.as_deref().unwrap_or("?"))).await;
            }
            WorkflowState::Running => {}
            state => {
                if new_boot && !self.commit(&mut m, rev, others).await? {
                    return Ok(None);
                }
                return Ok(Some(Next::Wait { state }));
            }
        }
        if let Some(jid) = m.current_job {
            match self.store.get(Kind::Job, &jid.to_string()).await? {
                Some(r) => {
                    let job: Job = decode(r.body)?;
                    match job.state {
                        // Asked again before starting it: the same job.
                        JobState::Created if !new_boot => return Ok(Some(Next::Run { job: Box::new(job) })),
                        JobState::Created | JobState::Running => {
                            let why = if new_boot {
                                "the machine rebooted while the job was handed out or running"
                            } else {
                                "the agent asked for work while this job was running (agent restarted?)"
                            };
                            others.extend(self.end_job(jid, JobState::Incomplete, why).await?);
                            self.note(&m, format!("job {jid} ({}) incomplete: {why}", job.task)).await;
                            m.current_job = None;
                            m.last_job = Some(jid);
                            self.count_failure(&mut m).await?;
                            if m.workflow_state != WorkflowState::Running {
                                if !self.commit(&mut m, rev, others).await? {
                                    return Ok(None);
                                }
                                return Ok(Some(Next::Wait { state: m.workflow_state }));
                            }
                        }
                        _ => m.current_job = None,
                    }
                }
                None => m.current_job = None,
            }
        }
        let Some(wf_name) = m.workflow.clone() else {
            return Ok(Some(Next::Wait { state: m.workflow_state }));
        };
        let defs = self.defs(&m).await?;
        let wf = defs.get::<Workflow>(Kind::Workflow, wf_name.as_str()).await?;
        // Walk forward to the next task, across finished stages.
        while let Some(stage_name) = m.stage.clone() {
            let stage = defs.get::<Stage>(Kind::Stage, stage_name.as_str()).await?;
            if let Some(task_name) = stage.tasks.get(m.task_index as usize) {
                let task = defs.get::<Task>(Kind::Task, task_name.as_str()).await?;
                let job = Job {
                    id: JobId::generate(),
                    machine: m.id,
                    task: task.name.clone(),
                    stage: Some(stage.name.clone()),
                    workflow: Some(wf.name.clone()),
                    state: JobState::Created,
                    exit_code: None,
                    started_at: None,
                    ended_at: None,
                    attempt: m.task_attempts + 1,
                    timeout_secs: task.timeout_secs,
                    action: None,
                    reason: String::new(),
                    meta: Default::default(),
                    revision: 0,
                    created_at: None,
                    updated_at: None,
                };
                m.current_job = Some(job.id);
                others.push(WriteOp::Put {
                    kind: Kind::Job,
                    key: job.id.to_string(),
                    body: body(&job)?,
                    expect: Expect::Absent,
                });
                if !self.commit(&mut m, rev, others).await? {
                    break;
                }
                let stored = self.get::<Job>(Kind::Job, &job.id.to_string()).await?.0;
                self.note(
                    &m,
                    format!(
                        "job {} handed out: task `{}`, stage `{}`, attempt {}",
                        job.id, task.name, stage.name, job.attempt
                    ),
                )
                .await;
                return Ok(Some(Next::Run { job: Box::new(stored) }));
            }
            // The stage is done.
            let index = wf.stages.iter().position(|s| *s == stage.name).map_or(wf.stages.len(), |i| i + 1);
            let reboot_after = stage.reboot;
            Self::enter_stage(&defs, &mut m, &wf, index).await?;
            if reboot_after && m.workflow_state == WorkflowState::Running {
                m.workflow_state = WorkflowState::Rebooting;
                m.reboot_from = m.boot_id.clone();
                m.rebooting_since = Some(plinth_model::now());
            }
            match m.workflow_state {
                WorkflowState::Running => continue,
                WorkflowState::Rebooting => {
                    if !self.commit(&mut m, rev, others).await? {
                        break;
                    }
                    let stage = m.stage.as_ref().map(|s| s.to_string()).unwrap_or_default();
                    let how = match &m.power_request {
                        Some(p) => format!("power {} through the BMC", p.action.as_str()),
                        None => "reboot".into(),
                    };
                    self.note(&m, format!("stage `{stage}`, bootenv `{}`: {how}", m.bootenv)).await;
                    return Ok(Some(Self::reboot_or_wait(&m)));
                }
                state => {
                    if !self.commit(&mut m, rev, others).await? {
                        break;
                    }
                    self.note(&m, format!("workflow {}", format!("{state:?}").to_lowercase())).await;
                    return Ok(Some(Next::Wait { state }));
                }
            }
        }
        if m.stage.is_none() {
            return Ok(Some(Next::Wait { state: m.workflow_state }));
        }
        Ok(None)
    }

    /// One attempt of [`Engine::finish`]: `None` when it lost a race.
    async fn finish_once(&self, machine: MachineId, job: JobId, outcome: &Outcome) -> Result<Option<Job>, EngineError> {
        let (mut j, jrev) = self.get::<Job>(Kind::Job, &job.to_string()).await?;
        if j.machine != machine {
            return Err(EngineError::NotFound(format!("job `{job}`")));
        }
        if j.state.ended() {
            return Ok(Some(j));
        }
        let (mut m, rev) = self.get::<Machine>(Kind::Machine, &machine.to_string()).await?;
        if m.current_job != Some(job) {
            return Err(EngineError::Conflict(format!("job `{job}` is not the machine's current job")));
        }
        let ok = matches!(outcome.exit_code, 0 | EXIT_REBOOT | EXIT_POWEROFF | EXIT_STOP);
        j.state = if ok { JobState::Finished } else { JobState::Failed };
        j.exit_code = Some(outcome.exit_code);
        j.ended_at = Some(plinth_model::now());
        j.started_at.get_or_insert(j.ended_at.unwrap_or_default());
        j.reason = outcome.reason.clone();
        j.action = match outcome.exit_code {
            EXIT_REBOOT => Some("reboot".into()),
            EXIT_POWEROFF => Some("poweroff".into()),
            EXIT_STOP => Some("stop".into()),
            _ => None,
        };
        m.current_job = None;
        m.last_job = Some(job);
        if ok {
            m.task_index += 1;
            m.task_attempts = 0;
            m.params.extend(outcome.params.clone());
            match outcome.exit_code {
                EXIT_REBOOT | EXIT_POWEROFF => {
                    m.workflow_state = WorkflowState::Rebooting;
                    m.reboot_from = m.boot_id.clone();
                    m.rebooting_since = Some(plinth_model::now());
                }
                EXIT_STOP => m.workflow_state = WorkflowState::Paused,
                _ => {}
            }
        } else {
            self.count_failure(&mut m).await?;
        }
        let op =
            WriteOp::Put { kind: Kind::Job, key: job.to_string(), body: body(&j)?, expect: Expect::Revision(jrev) };
        if self.commit(&mut m, rev, vec![op]).await? {
            let mut detail = format!(
                "job {job} {}: task `{}`, exit {}{}",
                if ok { "finished" } else { "failed" },
                j.task,
                outcome.exit_code,
                if outcome.reason.is_empty() { String::new() } else { format!(" ({})", outcome.reason) }
            );
            if let Some(a) = &j.action {
                detail.push_str(&format!("; {a}"));
            }
            if m.workflow_state == WorkflowState::Failed {
                detail.push_str("; workflow failed");
            }
            self.note(&m, detail).await;
            return Ok(Some(self.get::<Job>(Kind::Job, &job.to_string()).await?.0));
        }
        Ok(None)
    }

    /// One more failed run of the current task: retry, or stop as `failed`.
    async fn count_failure(&self, m: &mut Machine) -> Result<(), EngineError> {
        m.task_attempts += 1;
        let defs = self.defs(m).await?;
        let retries = match &m.stage {
            Some(s) => {
                let stage = defs.get::<Stage>(Kind::Stage, s.as_str()).await?;
                match stage.tasks.get(m.task_index as usize) {
                    Some(t) => defs.get::<Task>(Kind::Task, t.as_str()).await?.retries,
                    None => 0,
                }
            }
            None => 0,
        };
        if m.task_attempts > retries {
            m.workflow_state = WorkflowState::Failed;
        }
        Ok(())
    }

    /// The agent started running the job.
    pub async fn start(&self, machine: MachineId, job: JobId) -> Result<Job, EngineError> {
        let (mut j, rev) = self.get::<Job>(Kind::Job, &job.to_string()).await?;
        if j.machine != machine {
            return Err(EngineError::NotFound(format!("job `{job}`")));
        }
        match j.state {
            JobState::Created => {
                j.state = JobState::Running;
                j.started_at = Some(plinth_model::now());
                let r = self.store.put(Kind::Job, &job.to_string(), body(&j)?, Expect::Revision(rev)).await?;
                if let Some(rec) = self.store.get(Kind::Machine, &machine.to_string()).await? {
                    let m: Machine = decode(rec.body)?;
                    self.note(&m, format!("job {job} started: task `{}`", j.task)).await;
                }
                decode(r.body)
            }
            JobState::Running => Ok(j),
            _ => Err(EngineError::Conflict(format!("job `{job}` has already ended ({:?})", j.state).to_lowercase())),
        }
    }

    /// The job ended with `outcome`. Reporting the same end twice is
    /// harmless (the second is ignored).
    pub async fn finish(&self, machine: MachineId, job: JobId, outcome: Outcome) -> Result<Job, EngineError> {
        self.retrying(|| self.finish_once(machine, job, &outcome)).await
    }
}
