//! Plinth's TFTP protocol core, sans-I/O.
//!
//! [`Packet`] parses and encodes every TFTP packet (RFC 1350 plus the option
//! extension of RFC 2347). [`Transfer`] is the state machine of one read
//! transfer: it negotiates `blksize` (RFC 2348), `tsize` and `timeout`
//! (RFC 2349) and `windowsize` (RFC 7440), and turns received packets and
//! timeouts into [`Action`]s. It never touches a socket, a file or the
//! clock: the caller passes `now` in and performs the actions. The server is
//! read-only; write requests are refused by the shell.
#![forbid(unsafe_code)]

mod packet;
mod transfer;

pub use packet::{ErrorCode, Options, Packet, ParseError};
pub use transfer::{Action, Limits, Transfer, TransferError};
