//! The Gearman protocol, binary and text, as pure functions over bytes.
//!
//! In scope: framing of binary packets (`\0REQ`/`\0RES`, type, size, body),
//! the typed arguments of every packet type ([`Packet`]), an incremental
//! [`Decoder`] that also detects text admin lines on the same stream, encoding
//! into a caller's buffer, and parsing of admin request lines ([`admin`]).
//!
//! Out of scope: sockets, threads, clocks and logging. Nothing here performs
//! I/O, and no input makes any function here panic.

pub mod admin;
mod decode;
mod error;
mod packet;

pub use decode::{DEFAULT_MAX_BODY, DEFAULT_MAX_LINE, Decoder, Frame};
pub use error::ProtocolError;
pub use packet::{
    ArgList, HEADER_LEN, Magic, Packet, PacketType, Priority, SubmitKind, encode_raw,
};

#[cfg(test)]
mod tests;
