//! Debugging renders (`POST /api/v1/render`) run in a child process of
//! their own with a memory and CPU budget, so that a template written to
//! exhaust memory (`{{ ("x" * 100000000) ~ … }}`) costs that process and
//! nothing else. The child is this same binary (`plinth __render`): it
//! lowers its own limits, reads the render from standard input and writes
//! the answer to standard output. At most [`AT_ONCE`] run at a time.

use plinth_render::{DebugRender, RenderError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Memory one debugging render may use (its process's data segment).
pub const MEMORY_BYTES: u64 = 256 << 20;
/// CPU time one debugging render may use.
pub const CPU_SECS: u64 = 10;
/// Debugging renders running at once; more wait their turn.
pub const AT_ONCE: usize = 2;
/// The argument that makes the binary a render worker.
pub const WORKER_ARG: &str = "__render";
/// Longest a render may take, waiting for its turn included.
const WALL: Duration = Duration::from_secs(20);
/// Largest answer read back (the output cap, and room for JSON escaping).
const MAX_ANSWER: u64 = 4 * plinth_render::MAX_OUTPUT as u64;

static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(AT_ONCE);

/// Why a debugging render gave no output.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(
        "the render went over its budget ({} MiB of memory, {CPU_SECS} s of CPU) and was stopped",
        MEMORY_BYTES >> 20
    )]
    Budget,
    #[error("the render did not finish within {} s", WALL.as_secs())]
    Timeout,
    #[error("cannot run the render: {0}")]
    Worker(String),
}

/// The answer a worker writes.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Output(String),
    /// The bootenv has no such file.
    Missing,
    Error(RenderError),
}

/// Runs `job` in a worker process; `Ok(None)` when the bootenv has no
/// such file.
pub async fn render(job: &DebugRender) -> Result<Option<String>, SandboxError> {
    let input = serde_json::to_vec(job).map_err(|e| SandboxError::Worker(e.to_string()))?;
    let run = async {
        let _slot = SLOTS.acquire().await.map_err(|e| SandboxError::Worker(e.to_string()))?;
        let exe = std::env::current_exe().map_err(|e| SandboxError::Worker(e.to_string()))?;
        let mut child = tokio::process::Command::new(exe)
            .arg(WORKER_ARG)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SandboxError::Worker(e.to_string()))?;
        let mut stdin = child.stdin.take().ok_or_else(|| SandboxError::Worker("no stdin".into()))?;
        let mut stdout = child.stdout.take().ok_or_else(|| SandboxError::Worker("no stdout".into()))?;
        let feed = async move {
            // A worker that dies early closes its end: that is its answer.
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        let mut answer = Vec::new();
        let read = async { (&mut stdout).take(MAX_ANSWER).read_to_end(&mut answer).await };
        let ((), read) = tokio::join!(feed, read);
        read.map_err(|e| SandboxError::Worker(e.to_string()))?;
        let status = child.wait().await.map_err(|e| SandboxError::Worker(e.to_string()))?;
        if !status.success() {
            // Out of memory aborts it; out of CPU time kills it.
            return Err(SandboxError::Budget);
        }
        match serde_json::from_slice::<Answer>(&answer) {
            Ok(Answer::Output(text)) => Ok(Some(text)),
            Ok(Answer::Missing) => Ok(None),
            Ok(Answer::Error(e)) => Err(SandboxError::Render(e)),
            Err(e) => Err(SandboxError::Worker(format!("unreadable answer: {e}"))),
        }
    };
    tokio::time::timeout(WALL, run).await.map_err(|_| SandboxError::Timeout)?
}
