//! Finding, stopping and reaping the processes a shell run left behind,
//! wherever they went (a new session, a new process group, a double fork).
//!
//! Each run gets a token, `GEARFRAME_JOB=<worker pid>.<sequence>`, in its
//! environment; every descendant inherits it unless it clears its
//! environment. After the run's main process has ended, `/proc` is scanned
//! for processes whose environment holds the token, and for their
//! descendants (which may have cleared theirs): they get SIGTERM, then
//! SIGKILL after the run's kill grace, scanning again until none is left.
//!
//! The first run makes this process a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`): orphaned descendants of runs are re-parented
//! to it instead of to init, so their exit status is collected here. Only
//! processes this module has seen carrying a token of this process are
//! reaped, each by its own pid (never `waitpid(-1)`), and never a process
//! the shell runner itself started and still waits for: other children of
//! the program are left to their owners.
//!
//! Limits: a process that clears its environment (or replaces the token)
//! *and* leaves the run's process group is not found once no process
//! carrying the token is its ancestor; a process that exits
//! as a zombie child of another orphan before it was ever seen is not
//! reaped. A cgroup per run would be the complete answer.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// The environment variable holding a run's token.
pub(crate) const TOKEN_VAR: &str = "GEARFRAME_JOB";

/// How often the scan is repeated while processes are being stopped.
const TICK: Duration = Duration::from_millis(20);

/// The pids the shell runner started and will wait for itself; guarded
/// with its spawn lock so that a pid is in here before anyone can see it.
pub(crate) static RUNNER_CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Processes seen with a token of this process that may still need to be
/// reaped: pid to start time (to tell a reused pid).
static TRACKED: Mutex<Option<HashMap<u32, u64>>> = Mutex::new(None);

static SUBREAPER: Once = Once::new();

/// Makes this process a child subreaper, once.
pub(crate) fn become_subreaper() {
    SUBREAPER.call_once(|| match nix::sys::prctl::set_child_subreaper(true) {
        Ok(()) => log::debug!("worker is now the subreaper of its jobs' orphans"),
        Err(e) => log::warn!(
            "cannot become a child subreaper ({e}): processes a job detaches are stopped but reaped by init"
        ),
    });
}

/// A new token for one run.
pub(crate) fn new_token() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!("{}.{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// A process: pid and start time (clock ticks after boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Proc {
    pid: u32,
    start: u64,
}

/// `(state, ppid, start time)` of a process, from `/proc/PID/stat`.
fn stat_of(pid: u32) -> Option<(u8, u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After the name: state(0) ppid(1) ... starttime is field 22 of the
    // line, index 19 here.
    let state = *fields.first()?.as_bytes().first()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

/// Whether `/proc/PID/environ` holds `GEARFRAME_JOB=<token>` exactly, or
/// with `prefix` set, a token starting with `token`.
fn has_token(pid: u32, token: &str, prefix: bool) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
    let want = format!("{TOKEN_VAR}={token}");
    env.split(|&b| b == 0).any(|entry| {
        if prefix { entry.starts_with(want.as_bytes()) } else { entry == want.as_bytes() }
    })
}

/// Live processes (other than `except`) carrying `token`, and the live
/// descendants of those (which may have cleared their environment).
fn find(token: &str, except: u32) -> Vec<Proc> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut live: Vec<(Proc, u32)> = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || pid == except {
            continue;
        }
        if let Some((state, ppid, start)) = stat_of(pid)
            && state != b'Z'
            && state != b'X'
        {
            live.push((Proc { pid, start }, ppid));
        }
    }
    // A process of the run started no earlier than its main process: the
    // environment (costlier to read than the stat line) of older ones is
    // not read.
    let born = stat_of(except).map_or(0, |(_, _, start)| start);
    let mut found: BTreeSet<u32> = BTreeSet::new();
    for (p, _) in &live {
        if p.start >= born && has_token(p.pid, token, false) {
            found.insert(p.pid);
        }
    }
    // Children of found processes, until none is added.
    loop {
        let before = found.len();
        for (p, ppid) in &live {
            if found.contains(ppid) {
                found.insert(p.pid);
            }
        }
        if found.len() == before || found.is_empty() {
            break;
        }
    }
    live.into_iter().map(|(p, _)| p).filter(|p| found.contains(&p.pid)).collect()
}

/// Whether `p` still runs (its pid names the same process, not a zombie).
fn still_running(p: Proc) -> bool {
    stat_of(p.pid)
        .is_some_and(|(state, _, start)| start == p.start && state != b'Z' && state != b'X')
}

/// Reaps `p` when it is an exited child of this process; true when it is
/// gone (reaped, or no longer exists, or its pid now names another process).
fn reap_if_zombie(p: Proc) -> bool {
    match stat_of(p.pid) {
        None => true,
        Some((_, _, start)) if start != p.start => true,
        Some((b'Z' | b'X', ppid, _)) if ppid == std::process::id() => {
            let _ = waitpid(Pid::from_raw(p.pid as i32), Some(WaitPidFlag::WNOHANG));
            stat_of(p.pid).is_none_or(|(_, _, s)| s != p.start)
        }
        // A zombie of another parent: it reaps it, or dies and hands it here.
        Some(_) => false,
    }
}

fn signal_all(procs: &[Proc], sig: Signal) {
    for p in procs {
        // The start time is checked again just before the signal, so that a
        // pid freed and reused meanwhile is not hit.
        if stat_of(p.pid).is_some_and(|(_, _, s)| s == p.start) {
            let _ = kill(Pid::from_raw(p.pid as i32), sig);
        }
    }
}

/// Stops every process carrying `token` (other than `leader`, the run's
/// main process, which its runner reaps): SIGTERM, then SIGKILL after
/// `grace`, for at most `grace + kill_wait`. Reaps those that become
/// exited children of this process; hands those it could not reap yet to
/// [`reap_orphans`]. Returns how many processes were stopped.
pub(crate) fn end_all(token: &str, leader: u32, grace: Duration, kill_wait: Duration) -> usize {
    let mut seen: BTreeSet<Proc> = BTreeSet::new();
    let mut count = 0;
    let start = Instant::now();
    let mut killed = false;
    loop {
        // Those seen before that still run count too: a process found
        // through its parent is no longer found that way once the parent
        // is gone.
        let mut live = find(token, leader);
        let before: Vec<Proc> =
            seen.iter().copied().filter(|p| !live.contains(p) && still_running(*p)).collect();
        live.extend(before);
        if live.is_empty() {
            break;
        }
        let new: Vec<Proc> = live.iter().filter(|p| !seen.contains(p)).copied().collect();
        seen.extend(new.iter().copied());
        count += new.len();
        let elapsed = start.elapsed();
        if elapsed >= grace + kill_wait {
            log::error!(
                "job {token}: {} process(es) survive SIGKILL: {:?}",
                live.len(),
                live.iter().map(|p| p.pid).collect::<Vec<_>>()
            );
            break;
        }
        if elapsed >= grace {
            if !killed {
                log::warn!("job {token}: processes still running after SIGTERM: SIGKILL");
                killed = true;
            }
            signal_all(&live, Signal::SIGKILL);
        } else {
            signal_all(&new, Signal::SIGTERM);
        }
        seen.retain(|p| !reap_if_zombie(*p));
        std::thread::sleep(TICK);
    }
    // Every process of the run has exited: their zombies are reaped by
    // their parents or re-parented here, which takes a moment.
    let until = Instant::now() + kill_wait.min(Duration::from_secs(1));
    loop {
        seen.retain(|p| !reap_if_zombie(*p));
        if seen.is_empty() || Instant::now() >= until {
            break;
        }
        std::thread::sleep(TICK);
    }
    if !seen.is_empty() {
        track(seen.iter().copied());
    }
    count
}

/// Remembers the processes carrying `token` (left running on purpose), so
/// that [`reap_orphans`] collects them once they exit.
pub(crate) fn keep_all(token: &str, leader: u32) {
    track(find(token, leader));
}

fn track(procs: impl IntoIterator<Item = Proc>) {
    let mut tracked = TRACKED.lock().unwrap_or_else(|e| e.into_inner());
    let map = tracked.get_or_insert_with(HashMap::new);
    for p in procs {
        map.insert(p.pid, p.start);
    }
}

/// Reaps the exited processes of past runs that were re-parented here, and
/// starts tracking live children of this process that carry one of its
/// tokens (descendants of processes a run left running). Cheap: it reads
/// the `/proc` entries of this process's children only.
pub(crate) fn reap_orphans() {
    if !SUBREAPER.is_completed() && !tracking() {
        // Nothing was ever re-parented here.
        return;
    }
    let me = std::process::id();
    let prefix = format!("{me}.");
    let children = children_of(me);
    // The runner's lock: a pid it started is registered before it can
    // exit, so it is never taken for an orphan.
    let runner = RUNNER_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let mut tracked = TRACKED.lock().unwrap_or_else(|e| e.into_inner());
    let map = tracked.get_or_insert_with(HashMap::new);
    for (pid, state, start) in children {
        if runner.contains(&pid) {
            continue;
        }
        let zombie = state == b'Z' || state == b'X';
        if !zombie && !map.contains_key(&pid) && has_token(pid, &prefix, true) {
            map.insert(pid, start);
        }
    }
    map.retain(|&pid, &mut start| !runner.contains(&pid) && !reap_if_zombie(Proc { pid, start }));
}

/// Whether processes left running (or not reaped yet) are being tracked.
pub(crate) fn tracking() -> bool {
    TRACKED.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|m| !m.is_empty())
}

/// `(pid, state, start time)` of the children of `parent`.
fn children_of(parent: u32) -> Vec<(u32, u8, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((state, ppid, start)) = stat_of(pid)
            && ppid == parent
        {
            out.push((pid, state, start));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stat_and_token_scan() {
        let (state, ppid, start) = stat_of(std::process::id()).unwrap();
        assert_ne!(state, b'Z');
        assert!(ppid > 0 && start > 0);
        let a = new_token();
        assert_ne!(a, new_token());
        assert!(a.starts_with(&format!("{}.", std::process::id())));
        assert!(find(&a, 0).is_empty());
    }
}
