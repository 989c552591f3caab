//! A worker with a Rust handler: registers `reverse` on the servers named by
//! the argument or `GEARMAN_SERVERS` (default 127.0.0.1:4730) and serves
//! until Ctrl-C.
//!
//! `cargo run --example worker -- 127.0.0.1:4730`

use gearframe::worker::{Job, JobContext, JobError, Worker};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Without an argument the builder takes GEARMAN_SERVERS, else 127.0.0.1:4730.
    let mut builder = Worker::builder();
    if let Some(servers) = std::env::args().nth(1) {
        builder = builder.servers([servers]);
    }
    let worker = builder
        .client_id("reverse-example")
        .register("reverse", |job: &Job, ctx: &mut JobContext<'_>| {
            if job.payload().is_empty() {
                return Err(JobError::exception("nothing to reverse"));
            }
            ctx.status(1, 1).ok();
            Ok(job.payload().iter().rev().copied().collect())
        })
        .build()?;
    let stopper = worker.stopper();
    ctrlc::set_handler(move || stopper.shutdown())?;
    println!("serving `reverse` with {} slot(s); Ctrl-C stops", worker.live_slots());
    worker.join();
    Ok(())
}
