//! The machine-side agent (see `plinth_agent`). Built from this package so
//! the end-to-end tests can run it next to the server.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    plinth_agent::main()
}
