//! The servers a bench runs against, and what is read about their process:
//! CPU time from `/proc/<pid>/task/*/schedstat` (nanoseconds; the
//! process-wide `/proc/<pid>/stat` counts in 10 ms ticks, too coarse for
//! runs of a few hundred milliseconds), context switches from
//! `/proc/<pid>/task/*/status`.
//!
//! gearframe's server runs as a child process (`gearframe server`), like
//! gearmand, so both are measured the same way: the whole process's CPU
//! time, with no load-generator thread in it, and each on its own
//! allocator and scheduler footing.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gearframe::conn::Connection;

/// How long a server gets to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Linux reports process times in USER_HZ, which is 100 on every
/// architecture Linux supports in its user ABI.
const USER_HZ: f64 = 100.0;

/// A server under test.
#[derive(Debug)]
pub(super) struct Target {
    /// `gearframe`, `gearmand` or `external`.
    pub(super) name: &'static str,
    pub(super) addr: String,
    /// The server's process, when it runs on this machine.
    pub(super) pid: Option<u32>,
    child: Option<Child>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Target {
    /// `gearframe server` from this executable, as a child process.
    pub(super) fn gearframe(busy_poll: Option<std::time::Duration>) -> Result<Target, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        start("gearframe", || {
            let port = free_port()?;
            let mut cmd = Command::new(&exe);
            cmd.args(["-q", "server", "-L", &format!("127.0.0.1:{port}")]);
            if let Some(d) = busy_poll {
                cmd.arg("--busy-poll").arg(format!("{}us", d.as_micros()));
            }
            cmd.env_remove("GEARFRAME_CONFIG").current_dir(std::env::temp_dir());
            Ok((cmd, port))
        })
    }

    /// gearmand (default threads) on an ephemeral loopback port.
    pub(super) fn gearmand(bin: Option<&Path>) -> Result<Target, String> {
        let bin = match bin {
            Some(b) => b.to_path_buf(),
            None => find_gearmand().ok_or("gearmand not found (looked in PATH and /usr/sbin)")?,
        };
        start("gearmand", || {
            let port = free_port()?;
            let mut cmd = Command::new(&bin);
            cmd.args(["--listen=127.0.0.1", &format!("--port={port}"), "--log-file=none"]);
            Ok((cmd, port))
        })
    }

    /// A server that is already running; its process is measured when
    /// `getpid` names a process on this machine.
    pub(super) fn external(addr: &str) -> Result<Target, String> {
        let addr = gearframe::conn::with_default_port(addr);
        let pid = getpid(&addr).ok().filter(|p| Path::new(&format!("/proc/{p}")).exists());
        if pid.is_none() {
            log::warn!("{addr}: server process not found here; its CPU time is not measured");
        }
        // Check that it answers at all.
        admin(&addr, "status")?;
        Ok(Target { name: "external", addr, pid, child: None })
    }
}

/// Finds gearmand in `PATH` and the sbin directories.
pub(super) fn find_gearmand() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join("gearmand")).find(|p| p.is_file())
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Starts a server and waits until `getpid` on its port names our child
/// (another process may take a free port first: then it tries again).
fn start(
    name: &'static str,
    mut make: impl FnMut() -> Result<(Command, u16), String>,
) -> Result<Target, String> {
    let mut last = String::new();
    for _ in 0..5 {
        let (mut cmd, port) = make()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let pid = child.id();
        let addr = SocketAddr::from(([127, 0, 0, 1], port)).to_string();
        let mut t = Target { name, addr, pid: Some(pid), child: Some(child) };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = t.child.as_mut().map(Child::try_wait) {
                last = format!("{name} exited at start with {status}");
                break;
            }
            if getpid(&t.addr).is_ok_and(|p| p == pid) {
                log::info!("{name} pid={pid} listening on {}", t.addr);
                return Ok(t);
            }
            if Instant::now() >= deadline {
                last = format!("{name} did not answer on {} within {START_TIMEOUT:?}", t.addr);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Err(last)
}

/// Sends one admin command and returns its reply lines: one line for
/// `getpid`, the lines before `.` for list commands.
pub(super) fn admin(addr: &str, command: &str) -> Result<Vec<String>, String> {
    let err = |e: &dyn std::fmt::Display| format!("{addr}: admin {command}: {e}");
    let mut c = Connection::connect(addr, Duration::from_secs(2)).map_err(|e| err(&e))?;
    c.queue_bytes(command.as_bytes());
    c.queue_bytes(b"\n");
    c.flush().map_err(|e| err(&e))?;
    let deadline = Some(Instant::now() + Duration::from_secs(5));
    let mut lines = Vec::new();
    loop {
        let line = c.recv_line(deadline).map_err(|e| err(&e))?;
        if command == "getpid" {
            return Ok(vec![line]);
        }
        if line == "." {
            return Ok(lines);
        }
        lines.push(line);
    }
}

fn getpid(addr: &str) -> Result<u32, String> {
    let lines = admin(addr, "getpid")?;
    let line = lines.first().map(String::as_str).unwrap_or("");
    line.strip_prefix("OK ")
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| format!("{addr}: unexpected getpid reply {line:?}"))
}

/// A function's line of the admin `status`: (total, running, available
/// workers); zeros when the server does not list it.
pub(super) fn status(addr: &str, function: &str) -> Result<(u64, u64, u64), String> {
    for line in admin(addr, "status")? {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() >= 4 && f[0] == function {
            let n = |s: &str| s.trim().parse::<u64>().unwrap_or(0);
            return Ok((n(f[1]), n(f[2]), n(f[3])));
        }
    }
    Ok((0, 0, 0))
}

/// Polls `check` every few milliseconds until it returns true.
pub(super) fn wait_for(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// User + system CPU seconds of a process (all its threads, living and
/// ended).
pub(super) fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 11 and 12 here.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Voluntary plus involuntary context switches of each of a process's
/// living threads, by thread id.
pub(super) fn thread_switches(pid: &str) -> Option<TaskCounts> {
    per_thread(pid, "status", |s| {
        Some(
            s.lines()
                .filter_map(|line| {
                    line.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .map(|v| v.trim().parse::<u64>().unwrap_or(0))
                .sum(),
        )
    })
}

/// A counter of each living thread, by thread id.
pub(crate) type TaskCounts = std::collections::HashMap<u32, u64>;

/// How much the counters of the threads living at `b` grew since `a` (a
/// thread not in `a` started in between and counts whole).
pub(super) fn growth(a: &TaskCounts, b: &TaskCounts) -> u64 {
    b.iter().map(|(tid, &n)| n.saturating_sub(a.get(tid).copied().unwrap_or(0))).sum()
}

/// CPU time run by each of a process's living threads, in nanoseconds
/// (`/proc/<pid>/task/*/schedstat`). Threads that ended are missing: see
/// [`server_cpu_between`].
pub(super) fn thread_cpu_ns(pid: &str) -> Option<TaskCounts> {
    per_thread(pid, "schedstat", |s| s.split_whitespace().next()?.parse().ok())
}

/// `parse` of `/proc/<pid>/task/<tid>/<file>` for each living thread that
/// has it, by thread id.
fn per_thread(pid: &str, file: &str, parse: impl Fn(&str) -> Option<u64>) -> Option<TaskCounts> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut counts = TaskCounts::new();
    for task in dir.flatten() {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(s) = std::fs::read_to_string(task.path().join(file)) else { continue };
        if let Some(n) = parse(&s) {
            counts.insert(tid, n);
        }
    }
    Some(counts)
}

/// The server CPU seconds between two readings: the precise count of the
/// threads living at the second, unless threads ended in between and the
/// coarse count shows more.
pub(super) fn server_cpu_between(a: &Snap, b: &Snap) -> Option<f64> {
    let precise =
        a.server_cpu.as_ref().zip(b.server_cpu.as_ref()).map(|(a, b)| growth(a, b) as f64 / 1e9);
    let ticks = a.server_cpu_ticks.zip(b.server_cpu_ticks).map(|(a, b)| b - a);
    match (precise, ticks) {
        (Some(p), Some(t)) if t > p + 2.0 / USER_HZ => Some(t),
        (p, t) => p.or(t),
    }
}

/// A reading of the clocks and counters that a scenario reports.
#[derive(Debug, Clone)]
pub(crate) struct Snap {
    pub(super) at: Instant,
    /// CPU nanoseconds of each living server thread.
    pub(super) server_cpu: Option<TaskCounts>,
    /// The same in 10 ms ticks, counting ended threads too.
    pub(super) server_cpu_ticks: Option<f64>,
    pub(super) server_switches: Option<TaskCounts>,
    pub(super) own_cpu: Option<f64>,
}

/// Takes [`Snap`]s of one server and of this process.
#[derive(Debug, Clone, Copy)]
pub(super) struct Meter {
    pub(super) pid: Option<u32>,
}

impl Meter {
    pub(super) fn snap(&self) -> Snap {
        let pid = self.pid.map(|p| p.to_string());
        Snap {
            at: Instant::now(),
            server_cpu: pid.as_deref().and_then(thread_cpu_ns),
            server_cpu_ticks: pid.as_deref().and_then(cpu_seconds),
            server_switches: pid.as_deref().and_then(thread_switches),
            own_cpu: cpu_seconds("self"),
        }
    }
}
