//! Plinth's boot services: thin async shells around the sans-I/O protocol
//! cores, serving the file root (`<data-dir>/files`) and each machine's
//! rendered bootenv files to firmware, loaders and installers.
//!
//! - [`dhcp`]: DHCP and proxyDHCP (core: `plinth-dhcp`), only on the
//!   interfaces enabled subnets name.
//! - [`tftp`]: the read-only TFTP server (core: `plinth-tftp`).
//! - [`http`]: the plain-HTTP boot server (`--http-addr`, default :8091).
//! - [`generated`]: files made per request (a machine's bootenv files, the
//!   scripts for machines Plinth does not know).
//! - [`metadata`]: the metadata service's paths (NoCloud and EC2 layouts),
//!   answered under `/t/<token>/` for the token's machine.
//! - [`files`]: safe resolution of a requested path inside the file root.
//! - [`events`]: the boot event log.
//!
//! Nothing here serves the API, and no request can name a file outside the
//! file root: every path goes through [`files::FileRoot::resolve`].
#![forbid(unsafe_code)]

pub mod dhcp;
pub mod events;
pub mod files;
pub mod generated;
pub mod http;
pub mod metadata;
pub mod tftp;
