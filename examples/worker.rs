//! A worker with a Rust handler: registers `reverse` on the servers named by
//! the argument or `GEARMAN_SERVERS` (default 127.0.0.1:4730) and serves
//! until Ctrl-C.
//!
//! `cargo run --example worker -- 127.0.0.1:4730`

use gearframe::worker::{Job, JobContext, JobError, Worker};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let servers = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("GEARMAN_SERVERS").ok())
        .unwrap_or_else(|| "127.0.0.1:4730".into());
    let worker = Worker::builder()
        .servers([&servers])
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
    println!("serving `reverse` on {servers}; Ctrl-C stops");
    worker.join();
    Ok(())
}
