//! An admin query: the queues and workers of one server, as typed values.
//!
//! `cargo run --example admin -- 127.0.0.1:4730`

use std::time::Duration;

use gearframe::admin::AdminClient;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:4730".into());
    let mut admin = AdminClient::connect(&server, Duration::from_secs(5))?;
    println!("{server}: version {}, answers ping in {:?}", admin.version()?, admin.ping()?);
    for f in admin.status()? {
        println!(
            "function {}: {} queued, {} running, {} workers",
            f.function,
            f.queued(),
            f.running,
            f.workers
        );
    }
    for w in admin.workers()?.iter().filter(|w| !w.functions.is_empty()) {
        println!("worker {} at {}: {}", w.client_id, w.ip, w.functions.join(" "));
    }
    Ok(())
}
