//! Foreground against background jobs through the embedded server on
//! loopback, with gearframe's client and worker: the comparison users make
//! when they choose how to submit.
//!
//! * `foreground/sequential`: one `Client::submit` at a time with one echo
//!   worker slot: the round trip (submit, the job pushed to the sleeping
//!   worker, run, complete, result) of a single job.
//! * `foreground/batch/CxW`: 1000 echo jobs per iteration, pipelined by C
//!   client threads (one connection each), run by W worker slots.
//! * `background/single`: one `Client::submit_background` at a time (until
//!   JOB_CREATED), with one worker slot draining.
//! * `background/batch/CxW`: 1000 background jobs per iteration pipelined by
//!   C client threads while W worker slots drain the queue.
//!
//! Throughput is in jobs. Sample sizes are small for a 2-core machine; use
//! `gearframe bench` for the comparison with gearmand.

use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use gearframe::client::{Client, Job, JobOutcome};
use gearframe::server::{Server, ServerConfig, ServerHandle};
use gearframe::worker::{Echo, Worker};

const BATCH: usize = 1000;

fn server() -> ServerHandle {
    Server::bind(ServerConfig { listen: "127.0.0.1:0".into(), ..ServerConfig::default() })
        .expect("bind the embedded server")
}

fn workers(addr: &str, function: &str, threads: usize) -> Worker {
    Worker::builder()
        .servers([addr])
        .threads(threads)
        .grace(Duration::from_millis(100))
        .register(function, Echo)
        .build()
        .expect("start the workers")
}

fn client(addr: &str) -> Client {
    let c = Client::builder().servers([addr]).build().expect("client");
    c.echo(b"warm-up").expect("server answers");
    c
}

/// Runs `BATCH` jobs split over `clients` threads; returns the wall time.
fn batch(clients: &[Client], function: &str, background: bool) -> Duration {
    let per = BATCH / clients.len();
    let jobs: Vec<Job> =
        (0..per).map(|i| Job::new(function, format!("{i:016}")).background(background)).collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for c in clients {
            let jobs = &jobs;
            s.spawn(move || {
                for (job, out) in jobs.iter().zip(c.batch(jobs).run()) {
                    match out {
                        Ok(JobOutcome::Accepted { .. }) if background => {}
                        Ok(JobOutcome::Complete { data, .. }) if data == job.payload() => {}
                        other => panic!("unexpected outcome {other:?}"),
                    }
                }
            });
        }
    });
    start.elapsed()
}

/// `batch/1x1` and `batch/4x4`: `BATCH` jobs per iteration, with fresh
/// workers of a function of their own.
fn batches(g: &mut BenchmarkGroup<'_, WallTime>, addr: &str, background: bool) {
    g.throughput(Throughput::Elements(BATCH as u64));
    let prefix = if background { "bg" } else { "fg" };
    for (nc, nw) in [(1, 1), (4, 4)] {
        let function = format!("{prefix}-{nc}x{nw}");
        let w = workers(addr, &function, nw);
        let clients: Vec<Client> = (0..nc).map(|_| client(addr)).collect();
        g.bench_function(BenchmarkId::new("batch", format!("{nc}x{nw}")), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| batch(&clients, &function, background)).sum())
        });
        drop(w);
    }
}

fn foreground(c: &mut Criterion) {
    let server = server();
    let addr = server.local_addr().to_string();
    let mut g = c.benchmark_group("foreground");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    let w = workers(&addr, "fg1", 1);
    let cl = client(&addr);
    g.throughput(Throughput::Elements(1));
    g.bench_function("sequential", |b| {
        b.iter(|| match cl.submit("fg1", "ping") {
            Ok(JobOutcome::Complete { data, .. }) if data == b"ping" => {}
            other => panic!("unexpected outcome {other:?}"),
        })
    });
    drop(w);

    batches(&mut g, &addr, false);
    g.finish();
    server.shutdown();
    server.join();
}

fn background(c: &mut Criterion) {
    let server = server();
    let addr = server.local_addr().to_string();
    let mut g = c.benchmark_group("background");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    let w = workers(&addr, "bg1", 1);
    let cl = client(&addr);
    g.throughput(Throughput::Elements(1));
    g.bench_function("single", |b| {
        b.iter(|| cl.submit_background("bg1", "ping").expect("accepted"))
    });
    drop(w);

    batches(&mut g, &addr, true);
    g.finish();
    server.shutdown();
    server.join();
}

criterion_group!(benches, foreground, background);
criterion_main!(benches);
