//! The load generator built on gearframe's client and worker.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use gearframe::client::{Client, Job, JobOutcome};
use gearframe::worker::{Job as WorkerJob, JobContext, JobResult, Worker, WorkerBuilder};

use super::target::{Meter, Snap, status, wait_for};
use super::{Load, Sample, payload, payload_index};

/// How long any one scenario may take before it is declared failed.
const LIMIT: Duration = Duration::from_secs(300);

fn client(addr: &str, window: usize, load: &Load) -> Result<Client, String> {
    let mut b = Client::builder();
    if let Some(d) = load.busy_poll {
        b = b.busy_poll(d);
    }
    b.servers([addr])
        .window(window)
        .job_timeout(LIMIT)
        .ack_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())
}

/// The settings every bench worker pool shares: `threads` slots on `addr`.
fn worker_builder(addr: &str, threads: usize, load: &Load) -> WorkerBuilder {
    let mut b = Worker::builder()
        .servers([addr])
        .client_id("gearframe-bench")
        .threads(threads)
        .shutdown_jobs(false)
        .grace(Duration::from_secs(1));
    if let Some(d) = load.busy_poll {
        b = b.busy_poll(d);
    }
    b
}

/// A worker pool that echoes every job, once the server lists its slots.
fn echo_workers(addr: &str, function: &str, threads: usize, load: &Load) -> Result<Worker, String> {
    let w = worker_builder(addr, threads, load)
        .register(function, |job: &WorkerJob, _: &mut JobContext<'_>| -> JobResult {
            Ok(job.payload().to_vec())
        })
        .build()
        .map_err(|e| e.to_string())?;
    wait_for(Duration::from_secs(10), "the workers to register", || {
        Ok(status(addr, function)?.2 >= threads as u64)
    })?;
    Ok(w)
}

/// The latencies of pipelined jobs: the j-th outcome against the moment
/// the j-th submission could go out (the start for the first `window`, else
/// the (j - window)-th outcome).
fn window_latencies(start: Instant, mut done: Vec<Instant>, window: usize) -> Vec<f64> {
    done.sort();
    (0..done.len())
        .map(|j| {
            let sent = if j < window { start } else { done[j - window] };
            done[j].duration_since(sent).as_secs_f64() * 1e6
        })
        .collect()
}

/// `load.clients` threads, each with its own client, submitting its share
/// of the jobs as one pipelined batch (window = in-flight / clients).
fn pipelined(
    addr: &str,
    function: &str,
    load: &Load,
    background: bool,
    meter: &Meter,
) -> Result<Sample, String> {
    let clients = load.clients.max(1);
    let window = (load.in_flight / clients).max(1);
    let barrier = Barrier::new(clients + 1);
    let results = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for c in 0..clients {
            let barrier = &barrier;
            // The client is handed back so that its connection (and the
            // server's thread for it) lives until the CPU time is read.
            handles.push(s.spawn(move || -> Result<(Instant, Vec<Instant>, Client), String> {
                let prepared = (|| {
                    let client = client(addr, window, load)?;
                    // Opens the connection before the clock starts.
                    client.echo(b"warm-up").map_err(|e| e.to_string())?;
                    let jobs: Vec<Job> = (c..load.jobs)
                        .step_by(clients)
                        .map(|i| {
                            Job::new(function, payload(i, load.payload)).background(background)
                        })
                        .collect();
                    Ok::<_, String>((client, jobs))
                })();
                barrier.wait();
                let (client, jobs) = prepared?;
                let start = Instant::now();
                let mut done = vec![start; jobs.len()];
                let outcomes = client.batch(&jobs).on_done(|i, _| done[i] = Instant::now()).run();
                for (job, outcome) in jobs.iter().zip(outcomes) {
                    match outcome {
                        Ok(JobOutcome::Accepted { .. }) if background => {}
                        Ok(JobOutcome::Complete { data, .. })
                            if !background && data == job.payload() => {}
                        Ok(other) => {
                            return Err(format!(
                                "job {:?}: unexpected {}",
                                job.payload(),
                                other.name()
                            ));
                        }
                        Err(e) => return Err(format!("job {:?}: {e}", job.payload())),
                    }
                }
                Ok((start, done, client))
            }));
        }
        let before = meter.snap();
        barrier.wait();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a client thread panicked".into())))
            .collect();
        (before, meter.snap(), results)
    });
    let (before, after, results) = results;
    let mut clients = Vec::new();
    let mut lat = Vec::new();
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    for r in results {
        let (start, done, client) = r?;
        clients.push(client);
        first = Some(first.map_or(start, |f| f.min(start)));
        if let Some(&m) = done.iter().max() {
            last = Some(last.map_or(m, |l| l.max(m)));
        }
        lat.extend(window_latencies(start, done, window));
    }
    let wall = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    Ok(Sample::new(load.jobs, wall, lat, before, after))
}

/// Background submissions; leaves `load.jobs` jobs queued under `function`.
pub(super) fn bg(addr: &str, function: &str, load: &Load, meter: &Meter) -> Result<Sample, String> {
    let s = pipelined(addr, function, load, true, meter)?;
    let (total, _, _) = status(addr, function)?;
    if total != load.jobs as u64 {
        return Err(format!("{total} jobs queued after {} background submissions", load.jobs));
    }
    Ok(s)
}

/// `workers` worker slots drain the `load.jobs` queued under `function` by
/// [`bg`]; each job must run exactly once.
pub(super) fn drain(
    addr: &str,
    function: &str,
    load: &Load,
    workers: usize,
    meter: &Meter,
) -> Result<Sample, String> {
    let jobs = load.jobs;
    struct Seen {
        runs: Vec<AtomicU8>,
        count: AtomicUsize,
        first: Mutex<Option<Instant>>,
        last: Mutex<Option<Instant>>,
        tx: crossbeam_channel::Sender<()>,
        jobs: usize,
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    let seen = Arc::new(Seen {
        runs: (0..jobs).map(|_| AtomicU8::new(0)).collect(),
        count: AtomicUsize::new(0),
        first: Mutex::new(None),
        last: Mutex::new(None),
        tx,
        jobs,
    });
    let before = meter.snap();
    let s2 = Arc::clone(&seen);
    let worker = worker_builder(addr, workers, load)
        .register(function, move |job: &WorkerJob, _: &mut JobContext<'_>| -> JobResult {
            let now = Instant::now();
            let s = &s2;
            if let Some(i) = payload_index(job.payload()).filter(|&i| i < s.jobs) {
                s.runs[i].fetch_add(1, Ordering::Relaxed);
            }
            s.first.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(now);
            let n = s.count.fetch_add(1, Ordering::SeqCst) + 1;
            *s.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            if n == s.jobs {
                let _ = s.tx.try_send(());
            }
            Ok(Vec::new())
        })
        .build()
        .map_err(|e| e.to_string())?;
    let finished = rx.recv_timeout(LIMIT).is_ok();
    let after = meter.snap();
    let drained = wait_for(Duration::from_secs(30), "the queue to empty", || {
        Ok(status(addr, function)?.0 == 0)
    });
    worker.shutdown();
    worker.join();
    if !finished {
        return Err(format!("{} of {jobs} jobs ran", seen.count.load(Ordering::SeqCst)));
    }
    drained?;
    let wrong = seen.runs.iter().filter(|r| r.load(Ordering::Relaxed) != 1).count();
    if wrong > 0 || seen.count.load(Ordering::SeqCst) != jobs {
        return Err(format!(
            "{wrong} jobs did not run exactly once ({} runs for {jobs} jobs)",
            seen.count.load(Ordering::SeqCst)
        ));
    }
    let first = seen.first.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(before.at);
    let last = seen.last.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(after.at);
    let wall = last.duration_since(first).as_secs_f64();
    Ok(Sample::new(jobs, wall, Vec::new(), before, after))
}

/// Foreground echo jobs, pipelined, with `workers` echo slots.
pub(super) fn fg(
    addr: &str,
    function: &str,
    load: &Load,
    workers: usize,
    meter: &Meter,
) -> Result<Sample, String> {
    let w = echo_workers(addr, function, workers, load)?;
    let r = pipelined(addr, function, load, false, meter);
    w.shutdown();
    w.join();
    r
}

/// One client, one worker slot, one job at a time (`load.jobs` of
/// `load.payload` bytes).
pub(super) fn seq(
    addr: &str,
    function: &str,
    load: &Load,
    meter: &Meter,
) -> Result<Sample, String> {
    let (jobs, bytes) = (load.jobs, load.payload);
    let w = echo_workers(addr, function, 1, load)?;
    let r = (|| {
        let client = client(addr, 1, load)?;
        let check = |i: usize| -> Result<(), String> {
            let p = payload(i, bytes);
            match client.submit(function, p.clone()) {
                Ok(JobOutcome::Complete { data, .. }) if data == p => Ok(()),
                Ok(other) => Err(format!("job {i}: unexpected {}", other.name())),
                Err(e) => Err(format!("job {i}: {e}")),
            }
        };
        // The connection and the worker's first wake-up, off the clock.
        check(usize::MAX)?;
        let before: Snap = meter.snap();
        let mut lat = Vec::with_capacity(jobs);
        for i in 0..jobs {
            let t = Instant::now();
            check(i)?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let after = meter.snap();
        let wall = after.at.duration_since(before.at).as_secs_f64();
        Ok(Sample::new(jobs, wall, lat, before, after))
    })();
    w.shutdown();
    w.join();
    r
}
