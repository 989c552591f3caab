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
    // Without an argument the builder takes GEARMAN_SERVERS, else 127.0.0.1:4730.
    let mut builder = Client::builder().connect_timeout(Duration::from_secs(2));
    if let Some(servers) = std::env::args().nth(1) {
        builder = builder.servers([servers]);
    }
    let client = builder.build()?;
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
