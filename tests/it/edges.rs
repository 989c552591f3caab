//! Edges of the server and of `gearframe send` as a user meets them: job
//! handles unique across servers and restarts, cancelled jobs in `status`,
//! relative plan executables, results as they finish, an interrupted send.

use std::process::Command;

use gearframe::proto::PacketType;

use crate::support::{RawConn, ServerProc, bg};

/// Submits a background job and returns its handle.
fn submit_bg(addr: std::net::SocketAddr, function: &str, unique: &str) -> String {
    let mut c = RawConn::connect(addr, "client");
    c.send(bg(function.as_bytes(), unique.as_bytes(), b"x"));
    let p = c.recv_packet();
    assert_eq!(p.kind, PacketType::JobCreated, "{p:?}");
    p.arg_str(0)
}

/// `status` rows of a server as (function, total, running, workers).
fn status(addr: std::net::SocketAddr) -> Vec<(String, u64, u64, u64)> {
    let mut c = RawConn::connect(addr, "admin");
    c.send_line("status");
    c.recv_admin_list()
        .iter()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_string())
        .filter(|l| l != ".")
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap())
        })
        .collect()
}

fn queued(addr: std::net::SocketAddr, function: &str) -> u64 {
    status(addr).iter().find(|r| r.0 == function).map_or(0, |r| r.1 - r.2)
}

fn gearframe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args(args)
        .env_remove("GEARMAN_SERVERS")
        .output()
        .unwrap()
}

/// Two servers on one host issue different handles, a restart with the
/// persistent queue does not reissue a handle, and `admin -s A,B cancel H`
/// cancels the job of the server that issued H only.
#[test]
fn handles_name_their_server_and_cancel_acts_on_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("sqlite:{}", dir.path().join("q.db").display());
    let mut a = ServerProc::start(&["--queue", &queue], &dir.path().join("a.log"));
    let b = ServerProc::start(&[], &dir.path().join("b.log"));
    let ha = submit_bg(a.addr(), "edge", "ua");
    let hb = submit_bg(b.addr(), "edge", "ub");
    assert_ne!(ha, hb, "two servers on one host issued the same handle");
    for h in [&ha, &hb] {
        assert!(h.len() < 64 && h.is_ascii() && !h.contains([' ', '\0']), "handle {h:?}");
    }
    // The stored job comes back under a new handle, and new jobs do not
    // take the old one.
    a.terminate();
    a.restart();
    let again = submit_bg(a.addr(), "edge", "ua2");
    assert_ne!(again, ha, "a restarted server reissued a handle of its last run");
    assert_eq!(queued(a.addr(), "edge"), 2);
    let servers = format!("{},{}", a.addr_string(), b.addr_string());
    let out = gearframe(&["admin", "-s", &servers, "cancel", &hb]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(queued(b.addr(), "edge"), 0, "the job of the server that issued the handle");
    assert_eq!(queued(a.addr(), "edge"), 2, "the other server's jobs are left");
    // A handle of the last run names nothing now.
    let out = gearframe(&["admin", "-s", &a.addr_string(), "cancel", &ha]);
    assert!(!out.status.success());
    assert_eq!(queued(a.addr(), "edge"), 2);
}

/// A cancelled job leaves `status` (and `gearframe admin status`) at once.
#[test]
fn a_cancelled_job_leaves_status_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(&[], &dir.path().join("s.log"));
    let handles: Vec<String> =
        (0..3).map(|i| submit_bg(s.addr(), "cancelme", &format!("u{i}"))).collect();
    assert_eq!(queued(s.addr(), "cancelme"), 3);
    let out = gearframe(&["admin", "-s", &s.addr_string(), "cancel", &handles[1]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(queued(s.addr(), "cancelme"), 2);
    let out = gearframe(&["admin", "-s", &s.addr_string(), "status", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let row = &v["totals"][0];
    assert_eq!(row["function"], "cancelme", "{text}");
    assert_eq!((row["total"].as_u64(), row["queued"].as_u64()), (Some(2), Some(2)), "{text}");
}
