//! Errors of the pure protocol layer.

use super::packet::PacketType;
use std::fmt;

/// Why bytes could not be framed or a packet's arguments could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The first byte was NUL but the magic was neither `\0REQ` nor `\0RES`.
    BadMagic([u8; 4]),
    /// The packet type number is not part of the protocol.
    UnknownType(u32),
    /// The header announced a body over the configured maximum.
    BodyTooLarge {
        /// Size announced by the header.
        size: u64,
        /// The configured maximum.
        max: u32,
    },
    /// A text line ran past the maximum length without a newline.
    LineTooLong {
        /// The configured maximum.
        max: usize,
    },
    /// The body holds fewer NUL separators than the type needs.
    TooFewArguments {
        /// Packet type.
        kind: PacketType,
        /// Arguments the type carries.
        expected: usize,
    },
    /// A packet type without arguments carried a body.
    UnexpectedBody {
        /// Packet type.
        kind: PacketType,
    },
    /// A NUL byte inside an argument that is NUL-terminated on the wire.
    NulInArgument {
        /// Packet type.
        kind: PacketType,
        /// Position of the argument, from 0.
        index: usize,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::BadMagic(m) => write!(f, "bad packet magic {:02x?}", m),
            ProtocolError::UnknownType(t) => write!(f, "unknown packet type {t}"),
            ProtocolError::BodyTooLarge { size, max } => {
                write!(f, "packet body of {size} bytes is over the maximum of {max}")
            }
            ProtocolError::LineTooLong { max } => {
                write!(f, "text line longer than {max} bytes")
            }
            ProtocolError::TooFewArguments { kind, expected } => {
                write!(f, "{kind} needs {expected} arguments")
            }
            ProtocolError::UnexpectedBody { kind } => write!(f, "{kind} carries no arguments"),
            ProtocolError::NulInArgument { kind, index } => {
                write!(f, "argument {index} of {kind} contains a NUL byte")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}
