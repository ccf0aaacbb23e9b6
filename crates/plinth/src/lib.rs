//! What the `plinth` binary shares with its tests: the lab (namespaces,
//! bridges, QEMU guests) that `plinth lab` and the VM tests both use.
#![forbid(unsafe_code)]

pub mod lab;
