//! A client: submits `reverse` in the foreground (printing its result) and
//! in the background, to the servers named by the argument or
//! `GEARMAN_SERVERS` (default 127.0.0.1:4730). Run the `worker` example
//! first.
//!
//! `cargo run --example client -- 127.0.0.1:4730`

use std::time::Duration;

use gearframe::client::{Client, Job, JobOutcome};
use gearframe::proto::Priority;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let servers = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("GEARMAN_SERVERS").ok())
        .unwrap_or_else(|| "127.0.0.1:4730".into());
    let client =
        Client::builder().servers([&servers]).connect_timeout(Duration::from_secs(2)).build()?;
    let job = Job::new("reverse", "hello, gearman")
        .priority(Priority::High)
        .timeout(Duration::from_secs(10));
    match client.submit_job(&job)? {
        JobOutcome::Complete { data, .. } => println!("{}", String::from_utf8_lossy(&data)),
        other => println!("job ended with {}", other.name()),
    }
    let handle = client.submit_background("reverse", "later")?;
    println!("background: {} on {}", handle.as_str(), handle.server());
    Ok(())
}
