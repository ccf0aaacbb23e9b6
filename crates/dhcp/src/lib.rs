//! Plinth's DHCPv4 protocol core, sans-I/O.
//!
//! - [`Message`] decodes and encodes DHCP/BOOTP messages (RFC 2131/2132,
//!   long options split and joined per RFC 3396).
//! - [`pxe`] classifies a client (BIOS PXE, UEFI, UEFI HTTP boot, iPXE) from
//!   options 60, 77, 93, 94, 97 and 175 and picks its boot file.
//! - [`Pool`] finds free addresses in a range without scanning leases.
//! - [`index`] holds subnets, reservations, leases and offers and answers
//!   each request from them: the whole server but its sockets and store.
//! - [`server`] turns a request plus what the caller knows (subnet, the
//!   client's lease and reservation, a free address) into a [`server::Decision`]:
//!   the reply, where it goes, and the lease write that must be durable before
//!   it is sent.
//!
//! Nothing here opens a socket, reads a clock or touches the store.
#![forbid(unsafe_code)]

pub mod index;
mod message;
mod pool;
pub mod pxe;
pub mod server;

pub use message::{Message, MessageType, ParseError, code};
pub use pool::Pool;
