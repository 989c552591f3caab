//! Property tests of the protocol layer as a whole: encoding and parsing of
//! every packet type, framing independent of how the byte stream is split,
//! robustness against arbitrary bytes, and size limits enforced from the
//! header alone.

use super::admin::{self, AdminRequest};
use super::{
    DEFAULT_MAX_BODY, DEFAULT_MAX_LINE, Decoder, Frame, HEADER_LEN, Magic, Packet, PacketType,
    ProtocolError, SubmitKind, encode_raw,
};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// An owned copy of a frame, so frames from several decoders can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Binary(Magic, PacketType, Vec<u8>),
    Text(Vec<u8>),
}

impl Owned {
    fn of(f: Frame<'_>) -> Owned {
        match f {
            Frame::Binary { magic, kind, body } => Owned::Binary(magic, kind, body.to_vec()),
            Frame::Text(t) => Owned::Text(t.to_vec()),
        }
    }
}

/// Everything a decoder produced: its frames, then the error that stopped it
/// (if any), then how many bytes were left over. After an error the leftover
/// count depends on how much had been pushed, so it is recorded as 0.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Owned>,
    error: Option<ProtocolError>,
    left: usize,
}

/// Pulls frames until the decoder needs more bytes or fails.
fn drain(d: &mut Decoder, frames: &mut Vec<Owned>) -> Option<ProtocolError> {
    loop {
        match d.next_frame() {
            Ok(Some(f)) => frames.push(Owned::of(f)),
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

fn decoder(max_body: u32, max_line: usize) -> Decoder {
    Decoder::new(max_body).with_max_line(max_line)
}

/// Feeds `bytes` cut at the given ascending offsets, pulling frames after
/// every push, and stops at the first error.
fn decode_cut(bytes: &[u8], cuts: &[usize], max_body: u32, max_line: usize) -> Outcome {
    let mut d = decoder(max_body, max_line);
    let mut frames = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let end = end.clamp(start, bytes.len());
        d.push(&bytes[start..end]);
        start = end;
        if let Some(e) = drain(&mut d, &mut frames) {
            // A failed decoder keeps failing with the same error.
            assert_eq!(d.next_frame(), Err(e.clone()));
            return Outcome { frames, error: Some(e), left: 0 };
        }
    }
    Outcome { frames, error: None, left: d.buffered() }
}

fn decode_whole(bytes: &[u8], max_body: u32, max_line: usize) -> Outcome {
    decode_cut(bytes, &[], max_body, max_line)
}

/// Feeds `bytes` through `spare`/`commit` in chunks of the given sizes, as a
/// reader filling the decoder's buffer in place would.
fn decode_in_place(bytes: &[u8], chunks: &[usize], max_body: u32, max_line: usize) -> Outcome {
    let mut d = decoder(max_body, max_line);
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().copied().filter(|&n| n > 0).cycle();
    while !rest.is_empty() {
        let want = sizes.next().unwrap_or(rest.len());
        let n = want.min(rest.len());
        // Ask for more room than is written, as a socket read usually does.
        let spare = d.spare(want + 16);
        let spare_len = spare.len();
        spare[..n].copy_from_slice(&rest[..n]);
        d.commit(spare_len, n);
        rest = &rest[n..];
        if let Some(e) = drain(&mut d, &mut frames) {
            return Outcome { frames, error: Some(e), left: 0 };
        }
    }
    Outcome { frames, error: None, left: d.buffered() }
}

/// Builds the packet of type `kind` from its arguments in wire order,
/// independently of `Packet::parse`.
fn build<'a>(kind: PacketType, a: &[&'a [u8]]) -> Packet<'a> {
    use PacketType as T;
    assert_eq!(a.len(), kind.arg_count(), "{kind}");
    match kind {
        T::CanDo => Packet::CanDo { function: a[0] },
        T::CantDo => Packet::CantDo { function: a[0] },
        T::ResetAbilities => Packet::ResetAbilities,
        T::PreSleep => Packet::PreSleep,
        T::Unused => Packet::Unused,
        T::Noop => Packet::Noop,
        T::SubmitJob
        | T::SubmitJobBg
        | T::SubmitJobHigh
        | T::SubmitJobHighBg
        | T::SubmitJobLow
        | T::SubmitJobLowBg => Packet::Submit {
            kind: SubmitKind::of(kind).expect("a submit type"),
            function: a[0],
            unique: a[1],
            data: a[2],
        },
        T::JobCreated => Packet::JobCreated { handle: a[0] },
        T::GrabJob => Packet::GrabJob,
        T::NoJob => Packet::NoJob,
        T::JobAssign => Packet::JobAssign { handle: a[0], function: a[1], data: a[2] },
        T::WorkStatus => Packet::WorkStatus { handle: a[0], numerator: a[1], denominator: a[2] },
        T::WorkComplete => Packet::WorkComplete { handle: a[0], data: a[1] },
        T::WorkFail => Packet::WorkFail { handle: a[0] },
        T::GetStatus => Packet::GetStatus { handle: a[0] },
        T::EchoReq => Packet::EchoReq { data: a[0] },
        T::EchoRes => Packet::EchoRes { data: a[0] },
        T::Error => Packet::Error { code: a[0], text: a[1] },
        T::StatusRes => Packet::StatusRes {
            handle: a[0],
            known: a[1],
            running: a[2],
            numerator: a[3],
            denominator: a[4],
        },
        T::SetClientId => Packet::SetClientId { id: a[0] },
        T::CanDoTimeout => Packet::CanDoTimeout { function: a[0], timeout: a[1] },
        T::AllYours => Packet::AllYours,
        T::WorkException => Packet::WorkException { handle: a[0], data: a[1] },
        T::OptionReq => Packet::OptionReq { option: a[0] },
        T::OptionRes => Packet::OptionRes { option: a[0] },
        T::WorkData => Packet::WorkData { handle: a[0], data: a[1] },
        T::WorkWarning => Packet::WorkWarning { handle: a[0], data: a[1] },
        T::GrabJobUniq => Packet::GrabJobUniq,
        T::JobAssignUniq => {
            Packet::JobAssignUniq { handle: a[0], function: a[1], unique: a[2], data: a[3] }
        }
        T::SubmitJobSched => Packet::SubmitJobSched {
            function: a[0],
            unique: a[1],
            minute: a[2],
            hour: a[3],
            mday: a[4],
            month: a[5],
            wday: a[6],
            data: a[7],
        },
        T::SubmitJobEpoch => {
            Packet::SubmitJobEpoch { function: a[0], unique: a[1], epoch: a[2], data: a[3] }
        }
        T::SubmitReduceJob | T::SubmitReduceJobBackground => Packet::SubmitReduceJob {
            background: kind == T::SubmitReduceJobBackground,
            function: a[0],
            unique: a[1],
            reducer: a[2],
            aggregator: a[3],
            data: a[4],
        },
        T::GrabJobAll => Packet::GrabJobAll,
        T::JobAssignAll => Packet::JobAssignAll {
            handle: a[0],
            function: a[1],
            unique: a[2],
            reducer: a[3],
            data: a[4],
        },
        T::GetStatusUnique => Packet::GetStatusUnique { unique: a[0] },
        T::StatusResUnique => Packet::StatusResUnique {
            unique: a[0],
            known: a[1],
            running: a[2],
            numerator: a[3],
            denominator: a[4],
            clients: a[5],
        },
    }
}

/// The body on the wire: arguments joined by single NULs.
fn join(args: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            body.push(0);
        }
        body.extend_from_slice(a);
    }
    body
}

fn any_type() -> impl Strategy<Value = PacketType> {
    proptest::sample::select(PacketType::ALL)
}

fn any_magic() -> impl Strategy<Value = Magic> {
    prop_oneof![Just(Magic::Req), Just(Magic::Res)]
}

/// Arguments for `kind`: the non-final ones without NULs, the final one any
/// bytes at all.
fn args_for(kind: PacketType, max_len: usize) -> BoxedStrategy<Vec<Vec<u8>>> {
    let n = kind.arg_count();
    if n == 0 {
        return Just(Vec::new()).boxed();
    }
    let head = proptest::collection::vec(proptest::collection::vec(1u8..=255, 0..max_len), n - 1);
    let tail = proptest::collection::vec(any::<u8>(), 0..max_len);
    (head, tail)
        .prop_map(|(mut head, tail)| {
            head.push(tail);
            head
        })
        .boxed()
}

/// A packet type with matching random arguments.
fn any_packet(max_len: usize) -> impl Strategy<Value = (Magic, PacketType, Vec<Vec<u8>>)> {
    (any_magic(), any_type()).prop_flat_map(move |(m, t)| (Just(m), Just(t), args_for(t, max_len)))
}

/// A text admin line as sent (with its ending) and as the decoder must
/// return it (without). The first byte is never NUL, the content holds no
/// `\n` and does not end in `\r`.
fn any_line() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let word = prop_oneof![
        Just(b"status".to_vec()),
        Just(b"show jobs".to_vec()),
        Just(b"workers".to_vec()),
        Just(b"cancel job H:x:1".to_vec()),
        Just(b"maxqueue f 1 2 3".to_vec()),
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 0..40),
    ];
    (word, any::<bool>()).prop_map(|(mut content, crlf)| {
        if content.first() == Some(&0) {
            content[0] = b'x';
        }
        if content.last() == Some(&b'\r') {
            content.push(b'.');
        }
        let mut wire = content.clone();
        wire.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        (wire, content)
    })
}

/// One element of a mixed stream: its bytes and the frame it must decode to.
fn any_item() -> impl Strategy<Value = (Vec<u8>, Owned)> {
    prop_oneof![
        3 => any_packet(24).prop_map(|(m, t, args)| {
            let body = join(&args);
            let mut wire = Vec::new();
            encode_raw(m, t, &args.iter().map(Vec::as_slice).collect::<Vec<_>>(), &mut wire);
            (wire, Owned::Binary(m, t, body))
        }),
        1 => any_line().prop_map(|(wire, content)| (wire, Owned::Text(content))),
    ]
}

fn any_stream(max_items: usize) -> impl Strategy<Value = (Vec<u8>, Vec<Owned>)> {
    proptest::collection::vec(any_item(), 0..max_items).prop_map(|items| {
        let mut bytes = Vec::new();
        let mut frames = Vec::new();
        for (wire, frame) in items {
            bytes.extend_from_slice(&wire);
            frames.push(frame);
        }
        (bytes, frames)
    })
}

fn header(magic: [u8; 4], kind: u32, size: u32) -> Vec<u8> {
    let mut h = magic.to_vec();
    h.extend_from_slice(&kind.to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h
}

proptest! {
    #![proptest_config(Config::with_cases(512))]

    /// Every packet type survives encode → decode → parse unchanged, and the
    /// bytes on the wire are exactly the header and the NUL-joined arguments.
    #[test]
    fn every_type_round_trips((magic, kind, args) in any_packet(48)) {
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let packet = build(kind, &refs);
        prop_assert_eq!(packet.kind(), kind);
        prop_assert_eq!(packet.validate(), Ok(()));
        prop_assert_eq!(packet.args().iter().collect::<Vec<_>>(), refs.clone());

        let body = join(&args);
        prop_assert_eq!(packet.body_len(), body.len());
        let mut wire = Vec::new();
        packet.encode(magic, &mut wire).unwrap();
        let mut expected = header(magic.bytes(), kind as u32, body.len() as u32);
        expected.extend_from_slice(&body);
        prop_assert_eq!(&wire, &expected);
        prop_assert_eq!(&packet.to_vec(magic), &expected);
        let mut raw = Vec::new();
        encode_raw(magic, kind, &refs, &mut raw);
        prop_assert_eq!(&raw, &expected);

        let mut d = Decoder::default();
        d.push(&wire);
        let frame = d.next_frame().unwrap();
        prop_assert_eq!(frame, Some(Frame::Binary { magic, kind, body: &body }));
        prop_assert_eq!(Packet::parse(kind, &body), Ok(packet));
        prop_assert_eq!(d.next_frame(), Ok(None));
        prop_assert_eq!(d.buffered(), 0);
    }

    /// A NUL inside a non-final argument is caught by `validate`, which names
    /// the first such argument.
    #[test]
    fn nul_in_a_non_final_argument_is_refused(
        (_, kind, mut args) in any_packet(8).prop_filter("two or more args", |(_, t, _)| t.arg_count() >= 2),
        which in any::<proptest::sample::Index>(),
        at in any::<proptest::sample::Index>(),
    ) {
        let i = which.index(args.len() - 1);
        let pos = at.index(args[i].len() + 1);
        args[i].insert(pos, 0);
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(
            build(kind, &refs).validate(),
            Err(ProtocolError::NulInArgument { kind, index: i })
        );
    }
}

proptest! {
    #![proptest_config(Config::with_cases(96))]

    /// A mixed stream of packets and admin lines decodes to the frames it was
    /// built from, however it is split: at every single offset, one byte at a
    /// time, and read in place through `spare`/`commit`.
    #[test]
    fn any_split_gives_the_same_frames((bytes, expected) in any_stream(8)) {
        let whole = decode_whole(&bytes, DEFAULT_MAX_BODY, DEFAULT_MAX_LINE);
        prop_assert_eq!(&whole, &Outcome { frames: expected.clone(), error: None, left: 0 });
        for cut in 0..=bytes.len() {
            let split = decode_cut(&bytes, &[cut], DEFAULT_MAX_BODY, DEFAULT_MAX_LINE);
            prop_assert_eq!(&split, &whole, "cut at {}", cut);
        }
        let every: Vec<usize> = (0..bytes.len()).collect();
        prop_assert_eq!(&decode_cut(&bytes, &every, DEFAULT_MAX_BODY, DEFAULT_MAX_LINE), &whole);
        prop_assert_eq!(&decode_in_place(&bytes, &[1], DEFAULT_MAX_BODY, DEFAULT_MAX_LINE), &whole);
    }

    /// Long streams cut at random sets of points, pushed or read in place.
    #[test]
    fn random_cuts_of_long_streams(
        (bytes, expected) in any_stream(64),
        mut cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..48),
        chunks in proptest::collection::vec(1usize..300, 1..8),
    ) {
        let mut cuts: Vec<usize> = cuts.drain(..).map(|i| i.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let want = Outcome { frames: expected, error: None, left: 0 };
        prop_assert_eq!(&decode_cut(&bytes, &cuts, DEFAULT_MAX_BODY, DEFAULT_MAX_LINE), &want);
        prop_assert_eq!(&decode_in_place(&bytes, &chunks, DEFAULT_MAX_BODY, DEFAULT_MAX_LINE), &want);
    }
}

proptest! {
    #![proptest_config(Config::with_cases(512))]

    /// Arbitrary bytes never panic the decoder, and what it yields (frames,
    /// then possibly an error) does not depend on how the bytes arrive. Small
    /// limits make the size errors reachable.
    #[test]
    fn random_bytes_decode_the_same_in_any_pieces(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            // Mostly NULs and magic letters, so headers are sometimes valid.
            proptest::collection::vec(
                prop_oneof![Just(0u8), Just(b'R'), Just(b'E'), Just(b'Q'), Just(b'S'), 0u8..50, Just(b'\n')],
                0..200,
            ),
        ],
        max_body in 0u32..64,
        max_line in 0usize..40,
        mut cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..16),
        chunks in proptest::collection::vec(1usize..20, 1..4),
    ) {
        let whole = decode_whole(&bytes, max_body, max_line);
        let mut cuts: Vec<usize> = cuts.drain(..).map(|i| i.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(&decode_cut(&bytes, &cuts, max_body, max_line), &whole);
        prop_assert_eq!(&decode_in_place(&bytes, &chunks, max_body, max_line), &whole);
        // Every frame respects the limits.
        for f in &whole.frames {
            match f {
                Owned::Binary(_, _, body) => prop_assert!(body.len() <= max_body as usize),
                Owned::Text(line) => prop_assert!(
                    line.len() <= max_line,
                    "line of {} bytes over max_line {}", line.len(), max_line
                ),
            }
        }
    }

    /// Arbitrary bodies never panic `Packet::parse` for any type; a parsed
    /// packet has the requested type and re-encodes to the same body, and a
    /// refusal is for exactly the documented reason.
    #[test]
    fn parse_of_random_bodies(
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..64),
        ],
    ) {
        let nuls = body.iter().filter(|&&b| b == 0).count();
        for &kind in PacketType::ALL {
            let n = kind.arg_count();
            match Packet::parse(kind, &body) {
                Ok(p) => {
                    prop_assert_eq!(p.kind(), kind);
                    prop_assert_eq!(p.validate(), Ok(()));
                    let wire = p.to_vec(Magic::Req);
                    prop_assert_eq!(&wire[HEADER_LEN..], &body[..], "{}", kind);
                }
                Err(ProtocolError::TooFewArguments { kind: k, expected }) => {
                    prop_assert_eq!(k, kind);
                    prop_assert_eq!(expected, n);
                    prop_assert!(n >= 2 && nuls < n - 1, "{} refused with {} NULs", kind, nuls);
                }
                Err(ProtocolError::UnexpectedBody { kind: k }) => {
                    prop_assert_eq!(k, kind);
                    prop_assert!(n == 0 && !body.is_empty());
                }
                Err(e) => prop_assert!(false, "{}: unexpected error {:?}", kind, e),
            }
        }
    }

    /// Arbitrary lines never panic the admin parser; lines with more than
    /// five tokens are refused as such and nothing else is.
    #[test]
    fn admin_parse_of_random_lines(
        line in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..80),
            proptest::collection::vec(
                prop_oneof![
                    Just(&b" "[..]), Just(&b"  "[..]), Just(&b"show"[..]), Just(&b"jobs"[..]),
                    Just(&b"unique"[..]), Just(&b"cancel"[..]), Just(&b"job"[..]),
                    Just(&b"maxqueue"[..]), Just(&b"-7"[..]), Just(&b"99999999999999999999"[..]),
                    Just(&b"create"[..]), Just(&b"drop"[..]), Just(&b"function"[..]),
                    Just(&b"shutdown"[..]), Just(&b"graceful"[..]), Just(&b"STATUS"[..]),
                    Just(&b"\t"[..]), Just(&b"\r"[..]), Just(&b"\0"[..]),
                ],
                0..12,
            ).prop_map(|parts| parts.concat()),
        ],
    ) {
        let tokens = admin::tokens(&line).len();
        let req = admin::parse_request(&line);
        prop_assert_eq!(tokens > admin::MAX_TOKENS, req == AdminRequest::TooManyTokens);
        match req {
            AdminRequest::Invalid(reply) => {
                prop_assert!(reply.starts_with(b"ERR ") && reply.ends_with(b"\r\n"));
            }
            AdminRequest::MaxQueue { limits, .. } => {
                prop_assert!(limits.iter().all(|&l| l <= i32::MAX as u32));
            }
            _ => {}
        }
    }

    /// A body over the maximum is refused as soon as the 12 header bytes are
    /// in, without waiting for (or buffering) any of the body; a body of
    /// exactly the maximum is accepted.
    #[test]
    fn oversize_body_refused_from_the_header_alone(
        magic in any_magic(),
        kind in any_type(),
        max in 0u32..=u32::MAX - 1,
        over in any::<proptest::sample::Index>(),
        split in 0usize..HEADER_LEN,
    ) {
        let size = max + 1 + over.index((u32::MAX - max) as usize) as u32;
        let h = header(magic.bytes(), kind as u32, size);
        let mut d = Decoder::new(max);
        d.push(&h[..split]);
        prop_assert_eq!(d.next_frame(), Ok(None));
        d.push(&h[split..]);
        prop_assert_eq!(d.next_frame(), Err(ProtocolError::BodyTooLarge { size: size.into(), max }));
        prop_assert_eq!(d.buffered(), HEADER_LEN);

        let small = max.min(64);
        let mut d = Decoder::new(small);
        d.push(&header(magic.bytes(), kind as u32, small));
        prop_assert_eq!(d.next_frame(), Ok(None));
        d.push(&vec![7u8; small as usize]);
        let body = vec![7u8; small as usize];
        prop_assert_eq!(d.next_frame(), Ok(Some(Frame::Binary { magic, kind, body: &body })));
    }

    /// Bad magic and unknown types are refused from the header alone.
    #[test]
    fn bad_headers_refused_from_the_header_alone(
        magic in any::<[u8; 3]>(),
        kind in any::<u32>(),
        size in any::<u32>(),
    ) {
        let m = [0, magic[0], magic[1], magic[2]];
        let mut d = Decoder::default();
        d.push(&header(m, kind, size));
        let got = d.next_frame();
        match (Magic::from_bytes(m), PacketType::from_u32(kind)) {
            (None, _) => prop_assert_eq!(got, Err(ProtocolError::BadMagic(m))),
            (Some(_), None) => prop_assert_eq!(got, Err(ProtocolError::UnknownType(kind))),
            (Some(_), Some(_)) if size > DEFAULT_MAX_BODY => prop_assert_eq!(
                got,
                Err(ProtocolError::BodyTooLarge { size: size.into(), max: DEFAULT_MAX_BODY })
            ),
            (Some(_), Some(_)) if size == 0 => prop_assert!(matches!(got, Ok(Some(_)))),
            _ => prop_assert_eq!(got, Ok(None)),
        }
    }

    /// Text lines up to the maximum (without the line ending) are accepted
    /// and longer ones refused, wherever the stream is cut.
    #[test]
    fn text_line_length_limit(
        max_line in 0usize..40,
        extra in 0usize..3,
        over in any::<bool>(),
        crlf in any::<bool>(),
        cut in any::<proptest::sample::Index>(),
    ) {
        let len = if over { max_line + 1 + extra } else { max_line.saturating_sub(extra) };
        let mut wire = vec![b'a'; len];
        wire.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        let cut = cut.index(wire.len() + 1);
        let got = decode_cut(&wire, &[cut], DEFAULT_MAX_BODY, max_line);
        if over {
            prop_assert_eq!(got.error, Some(ProtocolError::LineTooLong { max: max_line }));
            prop_assert!(got.frames.is_empty());
        } else {
            prop_assert_eq!(got.frames, vec![Owned::Text(vec![b'a'; len])]);
            prop_assert_eq!(got.error, None);
        }
    }
}

/// The default limits: a header announcing the largest u32 size is refused
/// with only the header pushed, and the 64 KiB line limit holds.
#[test]
fn default_limits() {
    let mut d = Decoder::default();
    d.push(&header(*b"\0REQ", PacketType::SubmitJob as u32, u32::MAX));
    assert_eq!(
        d.next_frame(),
        Err(ProtocolError::BodyTooLarge { size: u64::from(u32::MAX), max: DEFAULT_MAX_BODY })
    );
    assert_eq!(d.buffered(), HEADER_LEN);

    let mut d = Decoder::default();
    d.push(&vec![b's'; DEFAULT_MAX_LINE]);
    assert_eq!(d.next_frame(), Ok(None));
    d.push(b"\n");
    assert!(matches!(d.next_frame(), Ok(Some(Frame::Text(t))) if t.len() == DEFAULT_MAX_LINE));

    let mut d = Decoder::default();
    d.push(&vec![b's'; DEFAULT_MAX_LINE + 2]);
    assert_eq!(d.next_frame(), Err(ProtocolError::LineTooLong { max: DEFAULT_MAX_LINE }));
}
