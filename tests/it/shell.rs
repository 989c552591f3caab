//! The shell runner with real processes: timeouts kill whole process
//! groups, every child is reaped, output caps hold, and failures read well.

use std::collections::HashSet;
use std::time::Duration;

use gearframe::worker::shell::{Ending, ExitKind, OutputMode, ShellCommand};
use gearframe::worker::{Handler, Job, JobContext, PayloadCommands, ShellFunction};
use rayon::prelude::*;

use crate::support;

/// `(state, ppid, pgrp)` of a live `/proc` entry.
fn stat(pid: u32) -> Option<(char, u32, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_ascii_whitespace();
    let state = it.next()?.chars().next()?;
    Some((state, it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Processes (not zombies) in any of `groups`.
fn live_in_groups(groups: &HashSet<u32>) -> Vec<(u32, char, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((state, _, pgrp)) = stat(pid)
            && groups.contains(&pgrp)
            && state != 'Z'
            && state != 'X'
        {
            out.push((pid, state, pgrp));
        }
    }
    out
}

/// Our own children that are zombies, among `pids`.
fn our_zombies(pids: &[u32]) -> Vec<u32> {
    let me = std::process::id();
    pids.iter()
        .copied()
        .filter(|&p| matches!(stat(p), Some(('Z', ppid, _)) if ppid == me))
        .collect()
}

fn first_line_pid(out: &[u8]) -> u32 {
    String::from_utf8_lossy(out).lines().next().unwrap().trim().parse().unwrap()
}

#[test]
fn timeout_kills_the_whole_group_including_a_background_grandchild() {
    let cmd = ShellCommand::shell("echo $$; sleep 60 & sleep 60")
        .timeout(Some(Duration::from_millis(300)))
        .kill_grace(Duration::from_millis(200));
    let out = cmd.run(b"").unwrap();
    assert_eq!(out.ending, Ending::TimedOut(Duration::from_millis(300)), "{out:?}");
    assert!(!out.success());
    assert_eq!(out.exit_code(), None);
    assert!(out.elapsed < Duration::from_secs(3), "{:?}", out.elapsed);
    let pgid = first_line_pid(&out.stdout);
    assert_eq!(pgid, out.pid);
    let left = live_in_groups(&HashSet::from([pgid]));
    assert!(left.is_empty(), "processes of group {pgid} survived: {left:?}");
    assert!(our_zombies(&[pgid]).is_empty());
    let msg = ShellFunction::result(out).unwrap_err();
    assert_eq!(msg.to_string(), "timed out after 0.3 s");
}

#[test]
fn a_child_that_ignores_sigterm_gets_sigkill() {
    let out = ShellCommand::shell("trap '' TERM; echo $$; sleep 60")
        .timeout(Some(Duration::from_millis(100)))
        .kill_grace(Duration::from_millis(100))
        .run(b"")
        .unwrap();
    assert!(matches!(out.ending, Ending::TimedOut(_)), "{out:?}");
    let pgid = first_line_pid(&out.stdout);
    assert!(live_in_groups(&HashSet::from([pgid])).is_empty());
}

#[test]
fn processes_left_behind_after_a_normal_exit_are_stopped() {
    let out = ShellCommand::shell("echo $$; sleep 60 >/dev/null 2>&1 &")
        .kill_grace(Duration::from_millis(200))
        .run(b"")
        .unwrap();
    assert!(out.success(), "{out:?}");
    let pgid = first_line_pid(&out.stdout);
    assert!(live_in_groups(&HashSet::from([pgid])).is_empty());
}

#[test]
fn a_thousand_timeouts_leave_no_zombie_and_no_process() {
    let cmd = ShellCommand::argv(["sleep", "30"])
        .timeout(Some(Duration::from_millis(20)))
        .kill_grace(Duration::from_millis(200));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(32).build().unwrap();
    let pids: Vec<u32> = pool.install(|| {
        (0..1000)
            .into_par_iter()
            .map(|_| {
                let out = cmd.run(b"").unwrap();
                assert!(matches!(out.ending, Ending::TimedOut(_)), "{out:?}");
                out.pid
            })
            .collect()
    });
    assert_eq!(pids.len(), 1000);
    let zombies = our_zombies(&pids);
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
    let groups: HashSet<u32> = pids.into_iter().collect();
    let left = live_in_groups(&groups);
    assert!(left.is_empty(), "processes survived: {left:?}");
}

#[test]
fn stdout_cap_holds_and_the_child_still_finishes() {
    let out = ShellCommand::argv(["head", "-c", "3000000", "/dev/zero"])
        .max_stdout(1000)
        .run(b"")
        .unwrap();
    assert!(out.success());
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.stdout_truncated);
    let e = ShellFunction::result(out).unwrap_err();
    assert!(e.to_string().contains("max_output"), "{e}");
}

#[test]
fn stderr_keeps_its_tail_under_a_flood() {
    let out = ShellCommand::shell("head -c 2000000 /dev/zero >&2; echo last-words >&2; exit 4")
        .max_stderr(100)
        .run(b"")
        .unwrap();
    assert_eq!(out.ending, Ending::Exited(ExitKind::Code(4)));
    assert_eq!(out.stderr.len(), 100);
    assert!(out.stderr_truncated);
    assert!(out.stderr.ends_with(b"last-words\n"));
}

#[test]
fn stdin_reaches_the_child_even_when_large() {
    let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = ShellCommand::argv(["cat"]).run(&payload).unwrap();
    assert!(out.success());
    assert!(out.stdout == payload, "stdout differs from stdin");
    // A child that never reads stdin does not block the runner.
    let out = ShellCommand::argv(["true"]).run(&payload).unwrap();
    assert!(out.success());
}

#[test]
fn exit_code_and_stderr_tail_reach_the_result() {
    let cmd = ShellCommand::shell("echo partial; echo 'disk full' >&2; exit 3");
    let out = cmd.run(b"").unwrap();
    assert_eq!(out.exit_code(), Some(3));
    let e = ShellFunction::result(out).unwrap_err();
    assert_eq!(e.to_string(), "exit code 3: disk full");
    assert_eq!(e.kind(), gearframe::worker::FailKind::Auto);
    // A signal is reported as 128 + n.
    let out = ShellCommand::shell("kill -9 $$").run(b"").unwrap();
    assert_eq!(out.ending, Ending::Exited(ExitKind::Signal(9)));
    assert_eq!(out.exit_code(), Some(137));
}

#[test]
fn missing_program_and_bad_cwd_are_clear_errors() {
    let e = ShellCommand::argv(["/nonexistent/prog-xyz"]).run(b"").unwrap_err().to_string();
    assert!(e.contains("cannot start `/nonexistent/prog-xyz`"), "{e}");
    assert!(e.to_lowercase().contains("no such file"), "{e}");
    let e = ShellCommand::argv(["true"])
        .cwd(Some("/nonexistent-dir-xyz".into()))
        .run(b"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent-dir-xyz"), "{e}");
    // Through a function, the same becomes a job failure.
    let f = ShellFunction::new(ShellCommand::argv(["/nonexistent/prog-xyz"]));
    let job = Job::new("f", "H:x:1", "u", "");
    let r = f.call(&job, &mut JobContext::detached(b"H:x:1"));
    assert!(r.unwrap_err().to_string().contains("cannot start"));
}

#[test]
fn job_metadata_is_in_the_environment_and_cwd_applies() {
    let dir = tempfile::tempdir().unwrap();
    let f = ShellFunction::new(
        ShellCommand::shell(
            "echo $GEARMAN_FUNCTION $GEARMAN_HANDLE $GEARMAN_UNIQUE $GEARMAN_ATTEMPT $MY; pwd",
        )
        .cwd(Some(dir.path().to_path_buf()))
        .env("MY", "var"),
    );
    let job = Job::new("fn1", "H:x:7", "uniq-1", "");
    let out = f.call(&job, &mut JobContext::detached(b"H:x:7")).unwrap();
    let text = String::from_utf8(out).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), "fn1 H:x:7 uniq-1 1 var");
    let pwd = std::fs::canonicalize(lines.next().unwrap()).unwrap();
    assert_eq!(pwd, std::fs::canonicalize(dir.path()).unwrap());
}

#[test]
fn payload_commands_need_the_allow_list() {
    let f = ShellFunction::from_payload(
        ShellCommand::argv(["unused"]),
        PayloadCommands::new(vec!["echo".into()]),
    );
    let job = Job::new("run", "H:x:1", "", r#"{"command": "echo", "argvs": "a  b"}"#);
    let out = f.call(&job, &mut JobContext::detached(b"H:x:1")).unwrap();
    assert_eq!(out, b"a  b\n");
    let job = Job::new("run", "H:x:2", "", r#"{"command": "rm", "argvs": ["-rf", "/tmp/x"]}"#);
    let e = f.call(&job, &mut JobContext::detached(b"H:x:2")).unwrap_err();
    assert!(e.to_string().contains("not in this function's allowed_commands"), "{e}");
    let job = Job::new("run", "H:x:3", "", "not json");
    assert!(f.call(&job, &mut JobContext::detached(b"H:x:3")).is_err());
}

#[test]
fn tty_mode_runs_without_capturing() {
    let out = ShellCommand::argv(["true"]).output(OutputMode::Tty).run(b"").unwrap();
    assert!(out.success());
    assert!(out.stdout.is_empty());
}

/// Commands started from several threads at once inherit none of each
/// other's pipes: each holds only its stdin, stdout and stderr. (A command
/// that inherits another's pipe keeps that one waiting for its output's end,
/// or for its exec report, until it exits itself.)
#[test]
fn concurrent_starts_do_not_leak_pipes_into_other_commands() {
    // `ls` lists its own descriptors: 0, 1, 2 and the one it reads the
    // directory with, when nothing leaked.
    let fds = || {
        let out = ShellCommand::argv(["ls", "/proc/self/fd"]).run(b"").unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().count()
    };
    let alone = fds();
    let leaks: Vec<usize> = (0..4)
        .into_par_iter()
        .flat_map_iter(|_| (0..150).map(|_| fds()).filter(|&n| n != alone))
        .collect();
    assert!(
        leaks.is_empty(),
        "{} of 600 commands held more descriptors than the {alone} of one started alone: {:?}",
        leaks.len(),
        &leaks[..leaks.len().min(5)]
    );
}

// ---- processes that leave the group ----

/// Waits in the command until `$F` has a pid in it.
const WAIT_PID: &str = "while [ ! -s \"$F\" ]; do sleep 0.01; done";

/// Runs `script` with `$F` naming an empty file that its escaping process
/// writes its pid to; returns the outcome and those pids.
fn run_escaping(cmd: ShellCommand) -> (gearframe::worker::shell::ShellOutcome, Vec<u32>) {
    let file = tempfile::NamedTempFile::new().unwrap();
    let out = cmd.env("F", file.path()).kill_grace(Duration::from_millis(300)).run(b"").unwrap();
    (out, support::pids_in(file.path()))
}

/// Nothing with `marker` runs any more, and none of `pids` is left as a
/// zombie of this process.
fn all_gone(marker: &str, pids: &[u32]) {
    support::none_left(Duration::from_secs(10), marker, &[]);
    let zombies = support::zombies_of(std::process::id(), pids);
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
}

#[test]
fn a_setsid_process_left_by_a_finished_job_is_stopped_and_reaped() {
    let _cleanup = support::KillMarked("sleep 61.101");
    let script =
        format!("setsid sh -c 'echo $$ >> \"$F\"; exec sleep 61.101' & {WAIT_PID}; echo started");
    let (out, pids) = run_escaping(ShellCommand::shell(script));
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, b"started\n");
    assert_eq!(pids.len(), 1, "the escaping process wrote its pid");
    all_gone("sleep 61.101", &pids);
}

#[test]
fn a_setsid_process_of_a_timed_out_job_is_stopped() {
    let _cleanup = support::KillMarked("sleep 61.102");
    let script = "setsid sh -c 'echo $$ >> \"$F\"; exec sleep 61.102'; sleep 60";
    let (out, pids) =
        run_escaping(ShellCommand::shell(script).timeout(Some(Duration::from_secs(1))));
    assert!(matches!(out.ending, Ending::TimedOut(_)), "{out:?}");
    all_gone("sleep 61.102", &pids);
}

#[test]
fn a_child_that_calls_setpgid_is_stopped() {
    let _cleanup = support::KillMarked("61.103");
    if support::peer("python3").is_none() {
        return;
    }
    let script = format!(
        "python3 -c 'import os,time; os.setpgid(0,0); open(os.environ[\"F\"],\"a\").write(\"%d\\n\" % os.getpid()); time.sleep(61.103)' & {WAIT_PID}; echo started"
    );
    let (out, pids) = run_escaping(ShellCommand::shell(script));
    assert!(out.success(), "{out:?}");
    assert_eq!(pids.len(), 1);
    all_gone("61.103", &pids);
}

#[test]
fn a_double_forked_daemon_is_stopped_and_reaped() {
    let _cleanup = support::KillMarked("sleep 61.104");
    let script = format!(
        "(setsid sh -c 'echo $$ >> \"$F\"; exec sleep 61.104' &) & {WAIT_PID}; echo started"
    );
    let (out, pids) = run_escaping(ShellCommand::shell(script));
    assert!(out.success(), "{out:?}");
    assert_eq!(pids.len(), 1);
    all_gone("sleep 61.104", &pids);
}

#[test]
fn an_escaped_process_that_ignores_sigterm_gets_sigkill() {
    let _cleanup = support::KillMarked("sleep 61.106");
    let script = format!(
        "setsid sh -c 'trap \"\" TERM; echo $$ >> \"$F\"; sleep 61.106; echo never' & {WAIT_PID}"
    );
    let (out, pids) = run_escaping(ShellCommand::shell(script));
    assert!(out.success(), "{out:?}");
    assert_eq!(pids.len(), 1);
    all_gone("sleep 61.106", &pids);
}

#[test]
fn keep_processes_leaves_a_daemon_running_and_reaps_it_once_it_exits() {
    let _cleanup = support::KillMarked("sleep 61.105");
    // A run that cleans up first, so this process is a subreaper and the
    // daemon is re-parented to it.
    assert!(ShellCommand::argv(["true"]).run(b"").unwrap().success());
    let script =
        format!("setsid sh -c 'echo $$ >> \"$F\"; exec sleep 61.105' & {WAIT_PID}; echo started");
    let (out, pids) = run_escaping(ShellCommand::shell(script).keep_processes(true));
    assert!(out.success(), "{out:?}");
    assert_eq!(pids.len(), 1);
    let daemon = pids[0];
    // Still running well after the run ended.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(support::live_with_marker("sleep 61.105"), [daemon]);
    let killed =
        std::process::Command::new("kill").args(["-KILL", &daemon.to_string()]).status().unwrap();
    assert!(killed.success());
    // Its exit status is collected by the runner's next run.
    support::eventually(Duration::from_secs(10), "the daemon reaped", || {
        ShellCommand::argv(["true"]).run(b"").unwrap();
        support::proc_state(daemon).is_none_or(|(state, _)| state != 'Z').then_some(())
    });
    assert!(support::live_with_marker("sleep 61.105").is_empty());
}

#[test]
fn a_failing_job_stops_its_setsid_process() {
    let _cleanup = support::KillMarked("sleep 61.108");
    let script =
        format!("setsid sh -c 'echo $$ >> \"$F\"; exec sleep 61.108' & {WAIT_PID}; exit 3");
    let (out, pids) = run_escaping(ShellCommand::shell(script));
    assert_eq!(out.ending, Ending::Exited(ExitKind::Code(3)), "{out:?}");
    assert_eq!(pids.len(), 1);
    all_gone("sleep 61.108", &pids);
}

#[test]
fn a_cancelled_job_stops_its_setsid_process() {
    let _cleanup = support::KillMarked("sleep 61.107");
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_owned();
    let out = ShellCommand::shell("setsid sh -c 'echo $$ >> \"$F\"; exec sleep 61.107' & sleep 60")
        .env("F", &path)
        .kill_grace(Duration::from_millis(300))
        .run_with(b"", &[], &|| !support::pids_in(&path).is_empty(), &mut |_| {})
        .unwrap();
    assert_eq!(out.ending, Ending::Cancelled, "{out:?}");
    let pids = support::pids_in(&path);
    assert_eq!(pids.len(), 1);
    all_gone("sleep 61.107", &pids);
}

#[test]
fn an_escaped_process_that_cleared_its_environment_is_found_through_its_parent() {
    let _cleanup = support::KillMarked("sleep 61.109");
    let script = format!(
        "setsid sh -c 'trap \"\" TERM; env -i sleep 61.109 & echo $! >> \"$F\"; wait' & {WAIT_PID}; echo started"
    );
    let (out, pids) = run_escaping(ShellCommand::shell(script));
    assert!(out.success(), "{out:?}");
    assert_eq!(pids.len(), 1);
    all_gone("sleep 61.109", &pids);
}

/// An executable plan for `gearframe send` named `plan.sh` in `dir`.
fn plan(dir: &std::path::Path, script: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("plan.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn send_plan(addr: &str, plan: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args(["send", "-s", addr, "--cycle", "0", "--plan", plan.to_str().unwrap()])
        .env_remove("GEARMAN_SERVERS")
        .env_remove("GEARFRAME_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn an_executable_plan_runs_as_a_process_group_that_is_stopped_when_it_ends() {
    let _cleanup = support::KillMarked("sleep 61.120");
    let ours = support::Ours::start(&support::Opts::default());
    let addr = ours.addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!(
        "sleep 61.120 >/dev/null 2>&1 & echo $! > '{}'\necho '[{{\"function\": \"planned\", \"data\": \"x\"}}]'",
        pids.display()
    );
    let out = send_plan(&addr, &plan(dir.path(), &script));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("sent 1"), "{err}");
    assert_eq!(support::pids_in(&pids).len(), 1, "the plan wrote its sleep's pid");
    // What the plan left running in its group is stopped with it.
    support::none_left(Duration::from_secs(10), "sleep 61.120", &[]);
}

#[test]
fn a_failing_executable_plan_is_a_one_line_error_and_sends_nothing() {
    let ours = support::Ours::start(&support::Opts::default());
    let addr = ours.addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let script = "echo '[{\"function\": \"planned\", \"data\": \"x\"}]'; exit 3";
    let out = send_plan(&addr, &plan(dir.path(), script));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("plan.sh: it ended with exit code 3"), "{err}");
    assert!(!err.contains("sent"), "{err}");
}
