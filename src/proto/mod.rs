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

pub use decode::{
    DEFAULT_MAX_BODY, DEFAULT_MAX_LINE, Decoder, Frame, KEEP_CAPACITY, RESERVE_AHEAD,
};
pub use error::ProtocolError;
pub use packet::{
    ArgList, HEADER_LEN, Magic, Packet, PacketType, Priority, SubmitKind, encode_raw,
};

/// The `OPTION_REQ` name a worker sends to have gearframe's server assign
/// it jobs directly. Once the server has answered `OPTION_RES`, a PRE_SLEEP
/// on that connection is answered with a JOB_ASSIGN_UNIQ as soon as a job is
/// there (at once when one is waiting) instead of a NOOP that the worker
/// would answer with a grab: two fewer trips per job for a worker that
/// sleeps between jobs. PRE_SLEEP then means "ready for one more job": such
/// a worker sends it only when it can take one, and does not grab while it
/// sleeps (the grab could bring a second job).
/// Other servers answer ERROR `UNKNOWN_OPTION` (gearmand) or nothing, and
/// the worker keeps to NOOP and grabs.
pub const PUSH_OPTION: &str = "gearframe-push";

/// The `OPTION_REQ` name a worker sends to learn whether WORK_EXCEPTION is
/// safe to send: gearframe's server answers `OPTION_RES` when it gives a
/// WORK_EXCEPTION only to clients that asked for exceptions and a WORK_FAIL
/// with the bare handle to the others, and ERROR `EXCEPTIONS_FOR_ALL` when it
/// was started with `exceptions` on (every client then gets the
/// WORK_EXCEPTION, which pygearman and the `gearman` tool mishandle). The
/// option changes nothing on the connection. Other servers answer ERROR
/// `UNKNOWN_OPTION` (gearmand, which turns an exception into a WORK_FAIL
/// with a trailing NUL that Perl and Python clients cannot match) or
/// nothing: there the worker reports failures as WORK_WARNING and WORK_FAIL.
pub const EXCEPTIONS_SAFE_OPTION: &str = "gearframe-exceptions-safe";

#[cfg(test)]
mod tests;
