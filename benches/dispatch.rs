//! The server's dispatch, as close to pure state as the public API allows.
//!
//! The job state is private to the server, so this measures it through one
//! loopback connection that pipelines whole batches: the socket cost is
//! paid once per batch of 1000 packets, and what remains per packet is
//! decoding, the state lock, the dispatch itself and encoding the reply.
//!
//! * `echo`: 1000 ECHO_REQ, 1000 ECHO_RES back: the floor (framing and the
//!   connection's threads, no job state).
//! * `submit_grab_complete`: 1000 SUBMIT_JOB_BG (1000 JOB_CREATED back),
//!   then 1000 GRAB_JOB_UNIQ (1000 JOB_ASSIGN_UNIQ back), then 1000
//!   WORK_COMPLETE and an ECHO_REQ to know they were handled: the life of a
//!   background job, three state operations, per element.
//!
//! Throughput is in elements (echoes, or jobs).

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gearframe::conn::Connection;
use gearframe::proto::{Packet, PacketType, Priority, SubmitKind};
use gearframe::server::{Server, ServerConfig};

const N: usize = 1000;
const BG: SubmitKind = SubmitKind { priority: Priority::Normal, background: true };

fn expect(c: &mut Connection, kind: PacketType, n: usize) -> Vec<Vec<u8>> {
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    let mut bodies = Vec::with_capacity(n);
    while bodies.len() < n {
        let p = c.recv(deadline).expect("reply");
        match p.kind {
            k if k == kind => bodies.push(p.body),
            PacketType::Noop => {}
            other => panic!("expected {kind}, got {other}"),
        }
    }
    bodies
}

fn dispatch(c: &mut Criterion) {
    let server =
        Server::bind(ServerConfig { listen: "127.0.0.1:0".into(), ..ServerConfig::default() })
            .expect("bind");
    let addr = server.local_addr().to_string();
    let mut conn = Connection::connect(&addr, Duration::from_secs(2)).expect("connect");
    conn.send(&Packet::CanDo { function: b"dispatch" }).expect("can_do");

    let mut g = c.benchmark_group("dispatch");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(N as u64));

    g.bench_function("echo", |b| {
        b.iter(|| {
            for _ in 0..N {
                conn.queue(&Packet::EchoReq { data: b"0123456789abcdef" }).expect("queue");
            }
            conn.flush().expect("write");
            expect(&mut conn, PacketType::EchoRes, N);
        })
    });

    g.bench_function("submit_grab_complete", |b| {
        b.iter(|| {
            for _ in 0..N {
                conn.queue(&Packet::Submit {
                    kind: BG,
                    function: b"dispatch",
                    unique: b"",
                    data: b"0123456789abcdef",
                })
                .expect("queue");
            }
            conn.flush().expect("write");
            expect(&mut conn, PacketType::JobCreated, N);
            for _ in 0..N {
                conn.queue(&Packet::GrabJobUniq).expect("queue");
            }
            conn.flush().expect("write");
            let assigned = expect(&mut conn, PacketType::JobAssignUniq, N);
            for body in &assigned {
                let handle = body.split(|&b| b == 0).next().unwrap_or_default();
                conn.queue(&Packet::WorkComplete { handle, data: b"" }).expect("queue");
            }
            conn.queue(&Packet::EchoReq { data: b"sync" }).expect("queue");
            conn.flush().expect("write");
            expect(&mut conn, PacketType::EchoRes, 1);
        })
    });
    g.finish();
    drop(conn);
    server.shutdown();
    server.join();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
