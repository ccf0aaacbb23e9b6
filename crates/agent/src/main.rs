//! The agent on its own (feature `standalone`): what
//! `scripts/build-agent.sh` builds statically for each architecture, with
//! only the agent's dependencies. The workspace gets the same binary from
//! `crates/plinth/src/bin/plinth-agent.rs`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    plinth_agent::main()
}
