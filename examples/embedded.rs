//! The whole framework in one process: an embedded job server, a worker
//! pool with a Rust handler, and a client submitting foreground and
//! background jobs.
//!
//! `cargo run --example embedded`

use gearframe::client::{Client, JobOutcome};
use gearframe::server::{Server, ServerConfig};
use gearframe::worker::{Job, JobContext, Worker};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::bind(ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() })?;
    let addr = server.local_addr().to_string();

    let worker = Worker::builder()
        .servers([addr.as_str()])
        .client_id("example")
        .threads(4)
        .register("reverse", |job: &Job, _ctx: &mut JobContext<'_>| {
            Ok(job.payload().iter().rev().copied().collect())
        })
        .build()?;

    let client = Client::builder().servers([addr.as_str()]).build()?;
    match client.submit("reverse", "hello")? {
        JobOutcome::Complete { data, .. } => {
            println!("reverse(hello) = {}", String::from_utf8_lossy(&data))
        }
        other => println!("the job did not complete: {}", other.name()),
    }
    let handle = client.submit_background("reverse", "in the background")?;
    println!("background job accepted: {}", handle.as_str());

    worker.shutdown();
    worker.join();
    server.shutdown();
    server.join();
    Ok(())
}
