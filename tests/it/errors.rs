//! `gearframe submit`'s errors name the server and the cause, and come
//! within the retry and job limits: refused, unresolvable, not Gearman,
//! a server ERROR, no JOB_CREATED, a payload over the packet limit, and
//! several servers each with its own failure.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gearframe::server::ServerConfig;

use crate::support::Ours;

/// Far above any of these errors' limits (3 s of retries): only there to
/// show the command did not hang.
const BOUND: Duration = Duration::from_secs(15);

/// `gearframe submit ARGS` with retry_timeout 3s and ack_timeout 1s;
/// returns the exit code, stderr and the time it took.
fn submit(args: &[&str], stdin: &[u8]) -> (Option<i32>, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "client:\n  retry_timeout: 3s\n  ack_timeout: 1s\n").unwrap();
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .arg("-c")
        .arg(&config)
        .arg("submit")
        .args(args)
        .env_remove("GEARMAN_SERVERS")
        .env_remove("GEARFRAME_CONFIG")
        .env_remove("RUST_LOG")
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // The client may refuse before it reads all of a large payload.
    let _ = input.write_all(stdin);
    drop(input);
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), t.elapsed())
}

/// A listener that answers every connection with `reply` (empty: never
/// answers) until the test ends; the thread ends with its listener.
struct FakeServer {
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(reply: &'static [u8]) -> FakeServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        if !reply.is_empty() {
                            let _ = s.write_all(reply);
                        }
                        held.push(s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        FakeServer { addr, stop, thread: Some(thread) }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn error_line(stderr: &str) -> &str {
    stderr.lines().find(|l| l.starts_with("gearframe: error:")).unwrap_or_default()
}

#[test]
fn a_refused_connection_is_named_with_its_server_even_with_a_short_timeout() {
    // Port 1: never an ephemeral port another test could be listening on.
    let dead = "127.0.0.1:1".to_string();
    let (code, err, took) = submit(&["-s", &dead, "--timeout", "2s", "-f", "x", "y"], b"");
    let line = error_line(&err);
    assert_eq!(code, Some(2), "{err}");
    assert!(took < BOUND, "took {took:?}: {err}");
    assert!(line.contains("connection refused") && line.contains(&dead), "{err}");
    assert!(!line.contains("phase ack"), "{err}");
    // Without --timeout: the retry is said once at the start, and the end
    // comes with the retry limit.
    let (code, err, took) = submit(&["-s", &dead, "-f", "x", "y"], b"");
    assert_eq!(code, Some(2), "{err}");
    assert!(took < BOUND, "took {took:?}: {err}");
    let retrying: Vec<&str> = err.lines().filter(|l| l.contains("retrying")).collect();
    assert_eq!(retrying.len(), 1, "{err}");
    assert!(retrying[0].contains(&dead) && retrying[0].contains("refused"), "{err}");
    assert!(retrying[0].contains("WARN"), "{err}");
    let line = error_line(&err);
    assert!(line.contains("connection refused") && line.contains("retry_timeout 3s"), "{err}");
}

#[test]
fn a_name_that_does_not_resolve_is_not_a_timeout() {
    let (code, err, took) =
        submit(&["-s", "nosuchhost.invalid", "--timeout", "3s", "-f", "x", "y"], b"");
    let line = error_line(&err);
    assert_eq!(code, Some(2), "{err}");
    assert!(took < BOUND, "took {took:?}: {err}");
    assert!(
        line.contains("cannot resolve the host name `nosuchhost.invalid`")
            && line.contains("nosuchhost.invalid:4730"),
        "{err}"
    );
    assert!(!line.contains("timed out"), "{err}");
}

#[test]
fn a_peer_that_does_not_speak_gearman_is_a_protocol_error() {
    let http = FakeServer::start(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    let (code, err, took) = submit(&["-s", &http.addr, "-f", "x", "y"], b"");
    let line = error_line(&err);
    assert_eq!(code, Some(2), "{err}");
    assert!(took < BOUND, "took {took:?}: {err}");
    assert!(line.contains("protocol error") && line.contains(&http.addr), "{err}");
}

#[test]
fn a_server_error_code_is_shown_at_once() {
    let ours = Ours::with_config(ServerConfig::default());
    let addr = ours.addr().to_string();
    let (code, err, took) = submit(&["-s", &addr, "-f", "a\tb", "y"], b"");
    let line = error_line(&err);
    assert_eq!(code, Some(2), "{err}");
    assert!(took < BOUND, "took {took:?}: {err}");
    assert!(line.contains("INVALID_FUNCTION_NAME") && line.contains(&addr), "{err}");
    assert!(!err.contains("retrying"), "{err}");
}

#[test]
fn a_server_that_never_answers_is_a_job_created_timeout_within_the_retry_limit() {
    let silent = FakeServer::start(b"");
    let (code, err, took) = submit(&["-s", &silent.addr, "-f", "x", "y"], b"");
    let line = error_line(&err);
    assert_eq!(code, Some(2), "{err}");
    assert!(took < BOUND, "took {took:?}: {err}");
    assert!(line.contains("waiting for JOB_CREATED") && line.contains(&silent.addr), "{err}");
}

#[test]
fn several_servers_each_show_their_last_failure() {
    // Port 1: never an ephemeral port another test could be listening on.
    let dead = "127.0.0.1:1".to_string();
    let silent = FakeServer::start(b"");
    let list = format!("{dead},{}", silent.addr);
    let (code, err, took) = submit(&["-s", &list, "-f", "x", "y"], b"");
    let line = error_line(&err);
    assert_eq!(code, Some(2), "{err}");
    assert!(took < BOUND, "took {took:?}: {err}");
    assert!(line.contains(&format!("cannot connect to {dead}: connection refused")), "{err}");
    assert!(line.contains(&format!("JOB_CREATED in phase ack, server {}", silent.addr)), "{err}");
}

#[test]
fn a_payload_over_the_packet_limit_is_argument_too_large_at_once() {
    // Over the client's own limit (64 MiB): refused before anything is sent.
    let ours = Ours::with_config(ServerConfig::default());
    let addr = ours.addr().to_string();
    let big = vec![b'a'; 70_000_000];
    let (code, err, took) = submit(&["-s", &addr, "-f", "x"], &big);
    assert_eq!(code, Some(2), "{err}");
    assert!(took < BOUND, "took {took:?}: {err}");
    assert!(error_line(&err).contains("ARGUMENT_TOO_LARGE"), "{err}");
    assert!(!err.contains("WARN"), "{err}");
    // Over a server's smaller limit: its ERROR ends the job, not retried.
    let small =
        Ours::with_config(ServerConfig { max_packet_size: 1_000_000, ..Default::default() });
    let addr = small.addr().to_string();
    // Large enough that the write fails before the answer is read.
    let (code, err, took) = submit(&["-s", &addr, "-f", "x"], &big[..30_000_000]);
    let line = error_line(&err);
    assert_eq!(code, Some(2), "{err}");
    assert!(took < BOUND, "took {took:?}: {err}");
    assert!(line.contains("ARGUMENT_TOO_LARGE") && line.contains(&addr), "{err}");
    assert!(!err.contains("retrying"), "{err}");
}
