//! `plinth __render`: one debugging render in a process of its own (see
//! `plinth_api::sandbox`). It first lowers its own memory and CPU limits,
//! so a template that tries to exhaust either ends this process, which the
//! server reports as over budget.

use plinth_api::sandbox::{Answer, CPU_SECS, MEMORY_BYTES};
use rustix::process::{Resource, Rlimit, setrlimit};
use std::io::{Read, Write};
use std::process::ExitCode;

/// Runs the render given on standard input; the answer goes to standard
/// output.
pub fn run() -> ExitCode {
    let limit = |resource, n: u64| setrlimit(resource, Rlimit { current: Some(n), maximum: Some(n) });
    if limit(Resource::Data, MEMORY_BYTES).is_err() || limit(Resource::Cpu, CPU_SECS).is_err() {
        return ExitCode::from(3);
    }
    let mut input = Vec::new();
    if std::io::stdin().take(256 << 20).read_to_end(&mut input).is_err() {
        return ExitCode::from(2);
    }
    let answer = match serde_json::from_slice::<plinth_render::DebugRender>(&input) {
        Ok(job) => match job.run() {
            Ok(Some(text)) => Answer::Output(text),
            Ok(None) => Answer::Missing,
            Err(e) => Answer::Error(e),
        },
        Err(_) => return ExitCode::from(2),
    };
    let Ok(out) = serde_json::to_vec(&answer) else { return ExitCode::from(2) };
    match std::io::stdout().lock().write_all(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(2),
    }
}
