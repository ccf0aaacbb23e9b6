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
//! - [`cache`]: the boot HTTP server's small-file cache, kept coherent by
//!   watching the file root.
//! - [`files`]: safe resolution of a requested path inside the file root.
//! - [`events`]: the boot event log.
//!
//! Nothing here serves the API, and no request can name a file outside the
//! file root: every path goes through [`files::FileRoot::clean`] and
//! [`files::FileRoot::resolve_clean`].
// `unsafe` only in `neighbour` (one ioctl), which says so.
#![deny(unsafe_code)]

pub mod cache;
pub mod dhcp;
pub mod events;
pub mod files;
pub mod generated;
pub mod http;
pub mod metadata;
mod neighbour;
pub mod tftp;
