//! Cost of the sans-IO protocol layer, which every byte the server reads or
//! writes goes through.
//!
//! * `encode`: building one packet into a reused buffer, for SUBMIT_JOB with
//!   an empty, 64-byte and 4 KiB payload, and for JOB_ASSIGN_UNIQ (the
//!   server's reply to a grab) both through [`Packet::encode`] and through the
//!   server's [`encode_raw`] fast path.
//! * `decode_packets`: framing and argument parsing of a buffer holding many
//!   packets of a typical worker/client mix, reported in packets per second.
//! * `decode_bytes`: the same for streams of SUBMIT_JOB packets with growing
//!   payloads, reported in bytes per second, to show the per-byte cost once
//!   the per-packet cost is amortised.
//! * `decode_chunked`: one large stream (small packets, 64 KiB payloads and
//!   long admin lines) fed to the decoder 1, 7, 512 and 4096 bytes at a time.
//!   The throughput must stay within a constant factor across chunk sizes; a
//!   decoder that rescanned or copied its buffered bytes on each push would
//!   fall off sharply at 1-byte chunks.
//! * `admin_lines`: decoding text admin lines and parsing them into requests.
//!
//! Sample counts and times are kept small so the whole run takes well under a
//! minute on two cores; the numbers are for spotting regressions of an order
//! of magnitude, not for fine comparisons.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gearframe::proto::{Decoder, Frame, Magic, Packet, PacketType, Priority, SubmitKind, admin};
use std::hint::black_box;
use std::time::Duration;

const FG: SubmitKind = SubmitKind { priority: Priority::Normal, background: false };

fn submit(data: &[u8]) -> Packet<'_> {
    Packet::Submit { kind: FG, function: b"reverse", unique: b"3f2a9c1e-unique-id", data }
}

fn assign_uniq(data: &[u8]) -> Packet<'_> {
    Packet::JobAssignUniq {
        handle: b"H:bench-host:1234567",
        function: b"reverse",
        unique: b"3f2a9c1e-unique-id",
        data,
    }
}

/// A typical mix: a client submits, the server creates, a worker grabs, gets
/// the assignment, reports status and completes, and the result is forwarded.
fn mixed_stream(rounds: usize) -> (Vec<u8>, u64) {
    let payload = [b'x'; 64];
    let mut out = Vec::new();
    let mut count = 0;
    for _ in 0..rounds {
        let packets = [
            (Magic::Req, submit(&payload)),
            (Magic::Res, Packet::JobCreated { handle: b"H:bench-host:1234567" }),
            (Magic::Req, Packet::GrabJobUniq),
            (Magic::Res, assign_uniq(&payload)),
            (
                Magic::Req,
                Packet::WorkStatus {
                    handle: b"H:bench-host:1234567",
                    numerator: b"50",
                    denominator: b"100",
                },
            ),
            (Magic::Req, Packet::WorkComplete { handle: b"H:bench-host:1234567", data: &payload }),
            (Magic::Req, Packet::PreSleep),
            (Magic::Res, Packet::Noop),
        ];
        for (magic, p) in packets {
            p.encode(magic, &mut out).expect("small packet");
            count += 1;
        }
    }
    (out, count)
}

/// Decodes every frame of `bytes` and parses the binary ones; returns the
/// number of frames so the work cannot be optimised away.
fn decode_all(bytes: &[u8]) -> usize {
    let mut d = Decoder::default();
    d.push(bytes);
    let mut n = 0;
    while let Some(frame) = d.next_frame().expect("valid stream") {
        match frame {
            Frame::Binary { kind, body, .. } => {
                black_box(Packet::parse(kind, body).expect("valid packet"));
            }
            Frame::Text(line) => {
                black_box(admin::parse_request(line));
            }
        }
        n += 1;
    }
    n
}

/// Feeds `bytes` `chunk` bytes at a time, pulling frames after each push.
fn decode_in_chunks(bytes: &[u8], chunk: usize) -> usize {
    let mut d = Decoder::default();
    let mut n = 0;
    for piece in bytes.chunks(chunk) {
        d.push(piece);
        while let Some(frame) = d.next_frame().expect("valid stream") {
            black_box(frame);
            n += 1;
        }
    }
    n
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    let mut buf = Vec::with_capacity(8192);
    for size in [0usize, 64, 4096] {
        let data = vec![b'd'; size];
        g.bench_with_input(BenchmarkId::new("submit_job", size), &data, |b, data| {
            b.iter(|| {
                buf.clear();
                submit(black_box(data)).encode(Magic::Req, &mut buf).expect("fits");
                black_box(buf.len())
            })
        });
    }
    let data = vec![b'd'; 64];
    g.bench_function("job_assign_uniq/64", |b| {
        b.iter(|| {
            buf.clear();
            assign_uniq(black_box(&data)).encode(Magic::Res, &mut buf).expect("fits");
            black_box(buf.len())
        })
    });
    g.bench_function("job_assign_uniq_raw/64", |b| {
        b.iter(|| {
            buf.clear();
            gearframe::proto::encode_raw(
                Magic::Res,
                PacketType::JobAssignUniq,
                &[b"H:bench-host:1234567", b"reverse", b"3f2a9c1e-unique-id", black_box(&data)],
                &mut buf,
            );
            black_box(buf.len())
        })
    });
    g.finish();
}

fn decode_packets(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_packets");
    let (stream, count) = mixed_stream(1000);
    g.throughput(Throughput::Elements(count));
    g.bench_function("mixed_8000", |b| {
        b.iter(|| assert_eq!(decode_all(black_box(&stream)) as u64, count))
    });
    g.finish();
}

fn decode_bytes(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_bytes");
    for size in [0usize, 64, 4096] {
        let data = vec![b'd'; size];
        let mut stream = Vec::new();
        // About 1 MiB of stream for each payload size.
        let n = (1 << 20) / (size + 40);
        for _ in 0..n {
            submit(&data).encode(Magic::Req, &mut stream).expect("fits");
        }
        g.throughput(Throughput::Bytes(stream.len() as u64));
        g.bench_with_input(BenchmarkId::new("submit_job", size), &stream, |b, s| {
            b.iter(|| assert_eq!(decode_all(black_box(s)), n))
        });
    }
    g.finish();
}

fn decode_chunked(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_chunked");
    let (mut stream, mut count) = mixed_stream(200);
    let big = vec![b'b'; 64 << 10];
    let long_line = format!("cancel job {}\r\n", "h".repeat(8 << 10));
    for _ in 0..4 {
        submit(&big).encode(Magic::Req, &mut stream).expect("fits");
        stream.extend_from_slice(long_line.as_bytes());
        count += 2;
    }
    g.throughput(Throughput::Bytes(stream.len() as u64));
    for chunk in [1usize, 7, 512, 4096] {
        g.bench_with_input(BenchmarkId::new("stream", chunk), &chunk, |b, &chunk| {
            b.iter(|| assert_eq!(decode_in_chunks(black_box(&stream), chunk) as u64, count))
        });
    }
    g.finish();
}

fn admin_lines(c: &mut Criterion) {
    let mut g = c.benchmark_group("admin_lines");
    let lines: [&[u8]; 8] = [
        b"status\r\n",
        b"workers\r\n",
        b"show jobs\r\n",
        b"show unique jobs\n",
        b"cancel job H:bench-host:1234567\r\n",
        b"maxqueue reverse 10 20 30\n",
        b"getpid\r\n",
        b"version\n",
    ];
    let mut stream = Vec::new();
    for _ in 0..500 {
        for l in lines {
            stream.extend_from_slice(l);
        }
    }
    let count = (lines.len() * 500) as u64;
    g.throughput(Throughput::Elements(count));
    g.bench_function("decode_and_parse_4000", |b| {
        b.iter(|| assert_eq!(decode_all(black_box(&stream)) as u64, count))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(900))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = encode, decode_packets, decode_bytes, decode_chunked, admin_lines
}
criterion_main!(benches);
