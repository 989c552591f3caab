//! The decoder on arbitrary bytes: no panic; the same frames (and the same
//! error) whether the bytes arrive at once or in pieces, through `push` or
//! through `spare`/`commit`; every binary frame that parses encodes back to
//! the same bytes.

#![no_main]

use gearframe::proto::{Decoder, Frame, Magic, Packet, ProtocolError};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Binary(Magic, u32, Vec<u8>),
    Text(Vec<u8>),
}

fn decoder(cfg: u8) -> Decoder {
    // Small limits so that the limit checks are reached.
    let max_body = [16, 1024, 1 << 20][usize::from(cfg % 3)];
    let max_line = [8, 256, 64 << 10][usize::from((cfg / 3) % 3)];
    Decoder::new(max_body).with_max_line(max_line)
}

/// Pulls every whole frame; the error ends the stream.
fn drain(d: &mut Decoder, out: &mut Vec<Owned>) -> Option<ProtocolError> {
    loop {
        match d.next_frame() {
            Ok(Some(Frame::Binary { magic, kind, body })) => {
                if let Ok(p) = Packet::parse(kind, body) {
                    let again = p.to_vec(magic);
                    assert_eq!(&again[12..], body, "{kind}: parse then encode changed the body");
                    assert_eq!(p.kind(), kind);
                }
                out.push(Owned::Binary(magic, kind as u32, body.to_vec()));
            }
            Ok(Some(Frame::Text(line))) => out.push(Owned::Text(line.to_vec())),
            Ok(None) => return None,
            Err(e) => {
                // An error is sticky.
                assert_eq!(d.next_frame().err(), Some(e.clone()));
                return Some(e);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else { return };
    let Some((&step, bytes)) = rest.split_first() else { return };
    let step = usize::from(step).max(1);

    let mut whole = Vec::new();
    let mut d = decoder(cfg);
    d.push(bytes);
    let e_whole = drain(&mut d, &mut whole);

    let mut pieces = Vec::new();
    let mut d = decoder(cfg);
    let mut e_pieces = None;
    for chunk in bytes.chunks(step) {
        d.push(chunk);
        e_pieces = drain(&mut d, &mut pieces);
        if e_pieces.is_some() {
            break;
        }
    }
    assert_eq!(whole, pieces, "frames differ when the bytes come in pieces of {step}");
    assert_eq!(e_whole, e_pieces);

    let mut spare = Vec::new();
    let mut d = decoder(cfg);
    let mut e_spare = None;
    for chunk in bytes.chunks(step) {
        let buf = d.spare(step + 7);
        let len = buf.len();
        buf[..chunk.len()].copy_from_slice(chunk);
        d.commit(len, chunk.len());
        e_spare = drain(&mut d, &mut spare);
        if e_spare.is_some() {
            break;
        }
    }
    assert_eq!(whole, spare, "frames differ when read through spare/commit");
    assert_eq!(e_whole, e_spare);
});
