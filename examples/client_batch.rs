//! Throughput of pipelined client batches.
//!
//! `cargo run --release --example client_batch -- bg 200000 [HOST:PORT]`
//! `cargo run --release --example client_batch -- fg 50000 [HOST:PORT] [WORKERS]`
//!
//! Without a server address an embedded server is started. Foreground runs
//! start WORKERS (default 4) minimal worker threads that echo each job.

use std::time::{Duration, Instant};

use gearframe::client::{Client, Job};
use gearframe::conn::Connection;
use gearframe::proto::{Packet, PacketType};
use gearframe::server::{Server, ServerConfig};

fn worker(addr: String) {
    let Ok(mut c) = Connection::connect(&addr, Duration::from_secs(2)) else { return };
    if c.send(&Packet::CanDo { function: b"bench_echo" }).is_err() {
        return;
    }
    loop {
        if c.send(&Packet::GrabJobUniq).is_err() {
            return;
        }
        let p = loop {
            match c.recv(None) {
                Ok(p) if p.kind == PacketType::Noop => continue,
                Ok(p) => break p,
                Err(_) => return,
            }
        };
        match p.packet() {
            Ok(Packet::JobAssignUniq { handle, data, .. }) => {
                if c.send(&Packet::WorkComplete { handle, data }).is_err() {
                    return;
                }
            }
            _ => {
                if c.send(&Packet::PreSleep).is_err() {
                    return;
                }
                match c.recv(None) {
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("bg");
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let workers: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(4);
    let server = match args.get(2) {
        Some(a) if a != "-" => {
            let addr = a.clone();
            (None, addr)
        }
        _ => {
            let s =
                Server::bind(ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() })
                    .expect("bind");
            let addr = s.local_addr().to_string();
            (Some(s), addr)
        }
    };
    let addr = server.1.clone();
    let client = Client::builder().servers([&addr]).build().expect("client");
    let background = mode == "bg";
    if !background {
        for _ in 0..workers {
            let a = addr.clone();
            std::thread::spawn(move || worker(a));
        }
    }
    let jobs: Vec<Job> = (0..n)
        .map(|i| Job::new("bench_echo", format!("payload-{i}")).background(background))
        .collect();
    // Warm up the connection.
    let _ = client.echo(b"x");
    let t = Instant::now();
    let outs = client.batch(&jobs).run();
    let secs = t.elapsed().as_secs_f64();
    let ok = outs.iter().filter(|o| o.is_ok()).count();
    println!("{mode}: {ok}/{n} jobs in {secs:.3}s = {:.0} jobs/s (server {addr})", n as f64 / secs);
    if let (Some(s), _) = server {
        s.shutdown();
        s.join();
    }
    std::process::exit(0);
}
