//! Plinth's boot services: thin async shells around the sans-I/O protocol
//! cores, serving the file root (`<data-dir>/files`) to firmware, loaders
//! and installers.
//!
//! - [`tftp`]: the read-only TFTP server (core: `plinth-tftp`).
//! - [`http`]: the plain-HTTP boot file server (`--http-addr`, default :8091).
//! - [`files`]: safe resolution of a requested path inside the file root.
//!
//! Nothing here serves the API, and no request can name a file outside the
//! file root: every path goes through [`files::FileRoot::resolve`].
#![forbid(unsafe_code)]

pub mod dhcp;
pub mod events;
pub mod files;
pub mod generated;
pub mod http;
pub mod tftp;
