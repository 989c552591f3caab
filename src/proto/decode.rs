//! Incremental decoder: push bytes as they arrive, pull whole frames.
//!
//! A frame is either a binary packet (the first byte is NUL) or a text admin
//! line (any other first byte), decided at each frame boundary, so both may be
//! mixed on one connection. "Need more bytes" is `Ok(None)`, never an error.
//! The decoder never rescans bytes it has already looked at, and refuses an
//! oversize body from the header alone, before any of the body is buffered.
//!
//! The buffer grows with the bytes that arrive, never with what a header
//! declares: a partial frame holds at most twice its received bytes plus
//! [`RESERVE_AHEAD`], so a peer that declares a large body and then sends
//! little costs little. Once every buffered byte was returned, a buffer grown
//! past [`KEEP_CAPACITY`] is freed, so one large packet does not pin its
//! memory on an idle connection.

use super::error::ProtocolError;
use super::packet::{HEADER_LEN, Magic, PacketType};

/// Default maximum body size: 64 MiB.
pub const DEFAULT_MAX_BODY: u32 = 64 << 20;
/// Default maximum text line length: 64 KiB.
pub const DEFAULT_MAX_LINE: usize = 64 << 10;
/// Most bytes reserved ahead of the received ones for a partial packet
/// whose buffered part is smaller than this.
pub const RESERVE_AHEAD: usize = 64 << 10;
/// A buffer with more capacity than this is freed once it holds no
/// unreturned byte.
pub const KEEP_CAPACITY: usize = 256 << 10;

/// One decoded frame, borrowing from the decoder's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A binary packet; parse its body with [`super::Packet::parse`].
    Binary {
        /// `\0REQ` or `\0RES`.
        magic: Magic,
        /// Packet type.
        kind: PacketType,
        /// The body, `size` bytes.
        body: &'a [u8],
    },
    /// A text line without its line ending (`\n` or `\r\n`).
    Text(&'a [u8]),
}

/// The incremental decoder.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the first unconsumed byte.
    pos: usize,
    /// For a text line in progress: how far (from `pos`) we have looked for `\n`.
    scanned: usize,
    max_body: u32,
    max_line: usize,
    failed: Option<ProtocolError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_BODY)
    }
}

impl Decoder {
    /// A decoder refusing bodies over `max_body` bytes.
    pub fn new(max_body: u32) -> Decoder {
        Decoder {
            buf: Vec::new(),
            pos: 0,
            scanned: 0,
            max_body,
            max_line: DEFAULT_MAX_LINE,
            failed: None,
        }
    }

    /// Sets the maximum text line length (without the line ending).
    pub fn with_max_line(mut self, max_line: usize) -> Decoder {
        self.max_line = max_line;
        self
    }

    /// Sets the largest body accepted from the next header on.
    pub fn set_max_body(&mut self, max_body: u32) {
        self.max_body = max_body;
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes of memory the buffer holds (its capacity).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Whether part of a frame is buffered: a header, a body or a line
    /// has begun but is not complete.
    pub fn in_frame(&self) -> bool {
        self.buffered() > 0
    }

    /// Moves the partial frame to the front; the bytes before it were
    /// returned already.
    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Makes room for `extra` more bytes, growing by at most what is
    /// buffered already (and at least [`RESERVE_AHEAD`]) at a time.
    fn grow_for(&mut self, extra: usize) {
        let len = self.buf.len();
        if self.buf.capacity() - len >= extra {
            return;
        }
        let step = extra.max(len.max(RESERVE_AHEAD));
        self.buf.reserve_exact(step);
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.grow_for(bytes.len());
        self.buf.extend_from_slice(bytes);
    }

    /// A spare region of at least `min` bytes at the end of the buffer to
    /// read into directly; report how much was written with [`Decoder::commit`].
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        self.compact();
        self.grow_for(min);
        let len = self.buf.len();
        self.buf.resize(len + min, 0);
        &mut self.buf[len..]
    }

    /// Keeps `n` bytes of the region returned by [`Decoder::spare`].
    pub fn commit(&mut self, spare_len: usize, n: usize) {
        let n = n.min(spare_len);
        let new_len = self.buf.len() - spare_len + n;
        self.buf.truncate(new_len);
    }

    /// Returns the next whole frame, `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    /// A [`ProtocolError`] for a bad magic, an unknown type, an oversize body
    /// or an overlong text line. The stream cannot be resynchronised after an
    /// error, so every later call returns the same error.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let avail_len = self.buf.len() - self.pos;
        if avail_len == 0 {
            self.release();
            return Ok(None);
        }
        if self.buf[self.pos] == 0 {
            if avail_len < HEADER_LEN {
                return Ok(None);
            }
            let (magic, kind, size) = self.check_header()?;
            let total = HEADER_LEN + size;
            if avail_len < total {
                // Room for more of the frame, never more than the bytes
                // received so far justify: the declared size is a claim.
                let need = total - avail_len;
                self.compact();
                let len = self.buf.len();
                if self.buf.capacity() - len < need {
                    self.buf.reserve_exact(need.min(len.max(RESERVE_AHEAD)));
                }
                return Ok(None);
            }
            let start = self.pos + HEADER_LEN;
            self.pos += total;
            Ok(Some(Frame::Binary { magic, kind, body: &self.buf[start..start + size] }))
        } else {
            let avail = &self.buf[self.pos..];
            let from = self.scanned;
            match avail[from..].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let nl = from + i;
                    let start = self.pos;
                    let mut end = start + nl;
                    if end > start && self.buf[end - 1] == b'\r' {
                        end -= 1;
                    }
                    // The limit applies to the line without its ending.
                    if end - start > self.max_line {
                        return Err(self.fail(ProtocolError::LineTooLong { max: self.max_line }));
                    }
                    self.pos += nl + 1;
                    self.scanned = 0;
                    Ok(Some(Frame::Text(&self.buf[start..end])))
                }
                None => {
                    self.scanned = avail_len;
                    if avail_len > self.max_line + 1 {
                        return Err(self.fail(ProtocolError::LineTooLong { max: self.max_line }));
                    }
                    Ok(None)
                }
            }
        }
    }

    /// Empties the buffer once every byte was returned, freeing it when it
    /// grew past [`KEEP_CAPACITY`].
    fn release(&mut self) {
        self.pos = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }

    fn check_header(&mut self) -> Result<(Magic, PacketType, usize), ProtocolError> {
        let h = &self.buf[self.pos..self.pos + HEADER_LEN];
        let magic_bytes = [h[0], h[1], h[2], h[3]];
        let kind = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let size = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let Some(magic) = Magic::from_bytes(magic_bytes) else {
            return Err(self.fail(ProtocolError::BadMagic(magic_bytes)));
        };
        let Some(kind) = PacketType::from_u32(kind) else {
            return Err(self.fail(ProtocolError::UnknownType(kind)));
        };
        if size > self.max_body {
            return Err(
                self.fail(ProtocolError::BodyTooLarge { size: size as u64, max: self.max_body })
            );
        }
        Ok((magic, kind, size as usize))
    }

    fn fail(&mut self, e: ProtocolError) -> ProtocolError {
        self.failed = Some(e.clone());
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::packet::{Packet, Priority, SubmitKind};

    fn sample_stream() -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let packets = [
            Packet::CanDo { function: b"reverse" },
            Packet::Submit {
                kind: SubmitKind { priority: Priority::High, background: true },
                function: b"f",
                unique: b"u",
                data: b"d\0ata",
            },
            Packet::GrabJobUniq,
            Packet::WorkComplete { handle: b"H:x:1", data: b"" },
        ];
        for p in packets {
            p.encode(Magic::Req, &mut out).unwrap();
        }
        out.extend_from_slice(b"status\r\n");
        Packet::EchoRes { data: b"ping" }.encode(Magic::Res, &mut out).unwrap();
        out.extend_from_slice(b"show jobs\n");
        (out, 7)
    }

    fn collect(d: &mut Decoder, out: &mut Vec<String>) {
        while let Some(f) = d.next_frame().unwrap() {
            out.push(match f {
                Frame::Binary { magic, kind, body } => format!("{magic:?} {kind} {body:?}"),
                Frame::Text(t) => format!("text {}", String::from_utf8_lossy(t)),
            });
        }
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let (stream, count) = sample_stream();
        let mut whole = Decoder::default();
        whole.push(&stream);
        let mut expected = Vec::new();
        collect(&mut whole, &mut expected);
        assert_eq!(expected.len(), count);
        for cut in 0..=stream.len() {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            d.push(&stream[..cut]);
            collect(&mut d, &mut got);
            d.push(&stream[cut..]);
            collect(&mut d, &mut got);
            assert_eq!(got, expected, "split at {cut}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn byte_by_byte() {
        let (stream, count) = sample_stream();
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for b in &stream {
            d.push(std::slice::from_ref(b));
            collect(&mut d, &mut got);
        }
        assert_eq!(got.len(), count);
    }

    #[test]
    fn oversize_body_refused_from_header() {
        let mut d = Decoder::new(100);
        let mut h = b"\0REQ".to_vec();
        h.extend_from_slice(&7u32.to_be_bytes());
        h.extend_from_slice(&101u32.to_be_bytes());
        d.push(&h);
        assert_eq!(d.next_frame(), Err(ProtocolError::BodyTooLarge { size: 101, max: 100 }));
        assert_eq!(d.buffered(), 12);
    }

    #[test]
    fn bad_magic_and_unknown_type() {
        let mut d = Decoder::default();
        d.push(b"\0XYZ\0\0\0\x01\0\0\0\0");
        assert_eq!(d.next_frame(), Err(ProtocolError::BadMagic(*b"\0XYZ")));
        let mut d = Decoder::default();
        d.push(b"\0REQ\0\0\0\x2b\0\0\0\0");
        assert_eq!(d.next_frame(), Err(ProtocolError::UnknownType(43)));
        let mut d = Decoder::default();
        d.push(b"\0REQ\0\0\0\0\0\0\0\0");
        assert_eq!(d.next_frame(), Err(ProtocolError::UnknownType(0)));
    }

    #[test]
    fn long_line_refused() {
        let mut d = Decoder::default().with_max_line(10);
        d.push(b"0123456789");
        assert_eq!(d.next_frame(), Ok(None));
        d.push(b"\n");
        assert_eq!(d.next_frame(), Ok(Some(Frame::Text(b"0123456789"))));
        d.push(b"0123456789abc");
        assert_eq!(d.next_frame(), Err(ProtocolError::LineTooLong { max: 10 }));
    }

    fn header(size: u32) -> Vec<u8> {
        let mut h = b"\0REQ".to_vec();
        h.extend_from_slice(&7u32.to_be_bytes());
        h.extend_from_slice(&size.to_be_bytes());
        h
    }

    #[test]
    fn a_declared_size_reserves_nothing_until_bytes_arrive() {
        let mut d = Decoder::new(u32::MAX);
        d.push(&header(u32::MAX));
        assert_eq!(d.next_frame(), Ok(None));
        assert!(d.capacity() <= 2 * RESERVE_AHEAD, "capacity {}", d.capacity());
        assert!(d.in_frame());
    }

    #[test]
    fn a_changed_limit_applies_from_the_next_header() {
        let mut d = Decoder::new(u32::MAX);
        d.set_max_body(100);
        d.push(&header(101));
        assert_eq!(d.next_frame(), Err(ProtocolError::BodyTooLarge { size: 101, max: 100 }));
        let mut d = Decoder::new(10);
        d.set_max_body(u32::MAX);
        d.push(&header(u32::MAX));
        d.push(&[b'x'; 100]);
        assert_eq!(d.next_frame(), Ok(None));
        assert!(d.capacity() <= 2 * RESERVE_AHEAD, "capacity {}", d.capacity());
    }

    #[test]
    fn the_buffer_grows_with_the_received_bytes() {
        let size = 8 << 20;
        let mut d = Decoder::new(u32::MAX);
        d.push(&header(size));
        let chunk = vec![b'x'; 4096];
        let mut sent = 0usize;
        while sent + chunk.len() < size as usize {
            d.push(&chunk);
            sent += chunk.len();
            assert_eq!(d.next_frame(), Ok(None));
            let held = d.buffered();
            assert!(d.capacity() <= 2 * held + RESERVE_AHEAD, "{} for {held}", d.capacity());
        }
        d.push(&chunk[..size as usize - sent]);
        match d.next_frame() {
            Ok(Some(Frame::Binary { body, .. })) => assert_eq!(body.len(), size as usize),
            other => panic!("expected the packet, got {other:?}"),
        }
        // All returned: the large buffer is freed on the next call.
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.capacity(), 0);
        assert!(!d.in_frame());
    }

    #[test]
    fn a_small_buffer_is_kept_for_the_next_frame() {
        let mut d = Decoder::default();
        d.push(b"status\n");
        assert_eq!(d.next_frame(), Ok(Some(Frame::Text(b"status"))));
        assert_eq!(d.next_frame(), Ok(None));
        assert!(d.capacity() > 0 && d.capacity() <= KEEP_CAPACITY);
        d.push(b"ver");
        assert!(d.in_frame());
    }

    #[test]
    fn spare_and_commit_read_in_place() {
        let mut d = Decoder::default();
        let s = d.spare(64);
        s[..7].copy_from_slice(b"status\n");
        let len = s.len();
        d.commit(len, 7);
        assert_eq!(d.next_frame(), Ok(Some(Frame::Text(b"status"))));
        assert_eq!(d.buffered(), 0);
    }
}
