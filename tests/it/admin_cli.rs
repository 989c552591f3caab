//! `gearframe admin` as a user runs it, against both servers with real
//! workers: job status by handle and unique id, watch ending with its
//! reader and fitting the terminal, workers grouped per process, exit codes
//! for unknown functions, `drop` naming what holds a function, `cancel` on
//! one server only, and an interrupted `stop-workers`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use gearframe::client::Job;
use gearframe::proto::Priority;
use gearframe::server::ServerConfig;
use gearframe::worker::{JobError, Worker};

use crate::admin::{
    Cfg, Gated, LIMIT, admin, client, config, figures, registered, run, run_with, servers,
    submit_many, table_rows, worker_process,
};
use crate::support::{ChildGuard, Gearmand, Opts, Ours, eventually};

/// A worker whose jobs report WORK_STATUS 3/10 and then wait for a release.
struct Reporting {
    worker: Option<Worker>,
    release: Sender<()>,
}

impl Reporting {
    fn start(addr: &str, function: &str) -> Reporting {
        let (tx, rx): (Sender<()>, Receiver<()>) = crossbeam_channel::unbounded();
        let w = Worker::builder()
            .servers([addr])
            .threads(1)
            .grace(Duration::ZERO)
            .register(
                function,
                move |_: &gearframe::worker::Job, ctx: &mut gearframe::worker::JobContext<'_>| {
                    ctx.status(3, 10).map_err(|e| JobError::fail(e.to_string()))?;
                    let _ = rx.recv_timeout(LIMIT);
                    Ok(b"done".to_vec())
                },
            )
            .build()
            .unwrap();
        Reporting { worker: Some(w), release: tx }
    }
}

impl Drop for Reporting {
    fn drop(&mut self) {
        let _ = self.release.send(());
        if let Some(w) = self.worker.take() {
            w.shutdown();
            w.join();
        }
    }
}

/// gearframe's server with its own handle prefix, and gearmand: the two
/// never issue the same handle.
fn two_servers() -> Option<(Ours, Gearmand)> {
    let ours = Ours::with_config(ServerConfig {
        job_handle_prefix: Some("H:gfadmin".into()),
        ..ServerConfig::default()
    });
    let g = Gearmand::start(&Opts::default())?;
    Some((ours, g))
}

#[test]
fn job_status_by_handle_and_unique_names_the_server_that_knows_it() {
    let Some((ours, g)) = two_servers() else { return };
    let cfg = config("");
    let addrs = [ours.addr().to_string(), g.addr().to_string()];
    let both = addrs.join(",");
    for (i, addr) in addrs.iter().enumerate() {
        let function = format!("js_{i}");
        let unique = format!("js-unique-{i}");
        let _w = Reporting::start(addr, &function);
        let c = client(addr);
        let handle = c
            .submit_background_job(
                &Job::new(function.as_str(), "x").unique(unique.as_str()).background(true),
            )
            .unwrap()
            .as_str()
            .to_string();
        eventually(LIMIT, "the job to report 3/10", || {
            let j = run(&cfg, &["admin", "job", &handle, "-s", &both, "--json"]).json();
            let s = j["servers"].as_array()?.iter().find(|s| s["server"] == addr.as_str())?;
            (s["status"]["numerator"] == 3).then_some(())
        });
        let out = run(&cfg, &["admin", "job", &handle, "-s", &both, "--json"]);
        assert_eq!(out.code(), Some(0), "{addr}: {}{}", out.stdout, out.stderr);
        let j = out.json();
        assert_eq!(j["known_by"], serde_json::json!([addr]), "{j}");
        let st = &j["servers"][i]["status"];
        assert_eq!(
            (&st["known"], &st["running"], &st["numerator"], &st["denominator"]),
            (&true.into(), &true.into(), &3.into(), &10.into()),
            "{j}"
        );
        assert_eq!(j["servers"][1 - i]["status"]["known"], false, "{j}");

        // The table, and the line naming the server.
        let out = run(&cfg, &["admin", "job", &handle, "-s", &both]);
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        let row = table_rows(&out.stdout).into_iter().find(|r| r[0] == *addr).unwrap();
        assert_eq!(row[1..5], ["yes", "yes", "3", "10"], "{}", out.stdout);
        assert!(out.stdout.contains(&format!("is known by {addr}\n")), "{}", out.stdout);

        // By unique id: GET_STATUS_UNIQUE, with the waiting clients.
        let out = run(&cfg, &["admin", "job", "--unique", &unique, "-s", &both, "--json"]);
        assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
        let j = out.json();
        assert_eq!(j["known_by"], serde_json::json!([addr]), "{j}");
        let st = &j["servers"][i]["status"];
        assert_eq!((&st["numerator"], &st["clients"]), (&3.into(), &0.into()), "{j}");
        let out = run(&cfg, &["admin", "job", "--unique", &unique, "-s", addr]);
        assert!(out.stdout.lines().next().unwrap().contains("CLIENTS"), "{}", out.stdout);
    }
    // Unknown everywhere: exit 1, one line naming what was asked.
    for args in [&["job", "H:gfadmin:999999"][..], &["job", "--unique", "nobody-has-this"][..]] {
        let mut all = vec!["admin", "-s", &both];
        all.extend_from_slice(args);
        let out = run(&cfg, &all);
        assert_eq!(out.code(), Some(1), "{args:?}: {}{}", out.stdout, out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.contains("no server knows") && out.stderr.contains(&addrs[1]));
    }
}

/// Spawns `gearframe admin ARGS` with stdout piped and stderr captured.
fn spawn_admin(cfg: &Cfg, args: &[&str], env: &[(&str, &str)]) -> ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gearframe"));
    cmd.arg("-c").arg(&cfg.path).arg("admin").args(args);
    cmd.env_remove("GEARMAN_SERVERS").env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    ChildGuard(
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(),
    )
}

#[test]
fn watch_ends_when_its_reader_goes_away() {
    let ours = Ours::start(&Opts::default());
    let addr = ours.addr().to_string();
    let cfg = config("");
    // A refresh every 10 s: the end must not wait for the next one.
    let mut child = spawn_admin(&cfg, &["watch", "-n", "10s", "-s", &addr], &[]);
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    for _ in 0..3 {
        lines.next().expect("a line").unwrap();
    }
    drop(lines);
    let status =
        eventually(Duration::from_secs(8), "watch to exit once its reader is gone", || {
            child.0.try_wait().unwrap()
        });
    assert_eq!(status.code(), Some(0), "{status}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.is_empty(), "no error spam: {err}");
}

#[test]
fn watch_filters_counts_workers_once_and_fits_the_terminal() {
    let cfg = config("");
    for srv in servers() {
        let addr = srv.addr();
        let ctx = srv.name();
        // One worker connection serving three functions.
        let _w = Gated::start(&addr, "wt-three", 1, &["wt_a", "wt_b", "wt_c"]);
        eventually(LIMIT, "the worker", || {
            (registered(&addr, "wt_a") + registered(&addr, "wt_c") == 2).then_some(())
        });
        submit_many(&addr, "wt_other", 2, Priority::Normal);
        let out = run(&cfg, &["admin", "watch", "--count", "1", "-s", &addr]);
        assert_eq!(out.code(), Some(0), "{ctx}: {}", out.stderr);
        let total = out.stdout.lines().find(|l| l.starts_with("TOTAL")).unwrap();
        let cells = table_rows(&format!("h\n{total}")).remove(0);
        assert_eq!(
            cells[1..4],
            ["2", "0", "1"],
            "{ctx}: one worker, not one per function:\n{}",
            out.stdout
        );

        // -f and a pattern pick the rows.
        // The functions of a watch table's rows.
        let names = |stdout: &str| -> Vec<String> {
            stdout
                .lines()
                .filter(|l| l.starts_with("wt_"))
                .filter_map(|l| l.split(' ').next())
                .map(str::to_string)
                .collect()
        };
        let out =
            run(&cfg, &["admin", "watch", "--count", "1", "-s", &addr, "-f", "wt_other", "wt_z*"]);
        assert_eq!(names(&out.stdout), ["wt_other"], "{ctx}: {}", out.stdout);
        let out = run(&cfg, &["admin", "watch", "--count", "1", "-s", &addr, "wt_?"]);
        assert_eq!(names(&out.stdout), ["wt_a", "wt_b", "wt_c"], "{ctx}: {}", out.stdout);
        let j =
            run(&cfg, &["admin", "watch", "--count", "1", "-s", &addr, "--json", "wt_?"]).json();
        assert_eq!(j["total_workers"], 1, "{ctx}: {j}");
        let out = run(&cfg, &["admin", "watch", "--count", "1", "-s", &addr, "-f", "wt_other"]);
        let total = out.stdout.lines().find(|l| l.starts_with("TOTAL")).unwrap();
        assert_eq!(table_rows(&format!("h\n{total}"))[0][3], "0", "{ctx}: {}", out.stdout);

        // A small terminal: the header and the totals stay, the rest is counted.
        for i in 0..12 {
            submit_many(&addr, &format!("wt_many_{i:02}"), 1, Priority::Normal);
        }
        let out =
            run_with(&cfg, &["admin", "watch", "--count", "1", "-s", &addr], &[("LINES", "14")]);
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert!(lines.len() <= 14, "{ctx}: {} lines:\n{}", lines.len(), out.stdout);
        let env = [("LINES", "14"), ("COLUMNS", "30")];
        let narrow = run_with(&cfg, &["admin", "watch", "--count", "1", "-s", &addr], &env);
        assert!(narrow.stdout.lines().all(|l| l.chars().count() <= 30), "{}", narrow.stdout);
        assert!(narrow.stdout.starts_with("gearframe admin watch"), "{}", narrow.stdout);
        assert!(lines[0].starts_with("gearframe admin watch"), "{ctx}: {}", out.stdout);
        assert!(lines.iter().any(|l| l.starts_with("TOTAL")), "{ctx}: {}", out.stdout);
        let more = lines.iter().find(|l| l.starts_with("… ")).expect("a `… N more` line");
        let shown = lines.iter().filter(|l| l.starts_with("wt_")).count();
        let n: usize = more.split(' ').nth(1).unwrap().parse().unwrap();
        assert_eq!(shown + n, 16, "{ctx}: {}", out.stdout);
    }
}

#[test]
fn workers_shows_a_10_slot_worker_as_one_row() {
    let cfg = config("");
    for srv in servers() {
        let addr = srv.addr();
        let ctx = srv.name();
        let _w = worker_process(&cfg, &addr, "ten_slots", 10);
        eventually(LIMIT, "10 slots", || (registered(&addr, "ten_slots") == 10).then_some(()));
        let out = run(&cfg, &["admin", "workers", "-s", &addr]);
        assert_eq!(out.code(), Some(0), "{ctx}: {}", out.stderr);
        let rows = table_rows(&out.stdout);
        assert_eq!(rows.len(), 2, "{ctx}: {}", out.stdout);
        assert_eq!(
            rows[0][1..],
            ["127.0.0.1", "stoppable", "10", "ten_slots"],
            "{ctx}: {}",
            out.stdout
        );
        assert_eq!(rows[1], ["1 worker, 10 slots"], "{ctx}");
        let j = run(&cfg, &["admin", "workers", "ten_slots", "-s", &addr, "--json"]).json();
        let w = &j["servers"][0]["workers"];
        assert_eq!(w.as_array().map(Vec::len), Some(1), "{ctx}: {j}");
        assert_eq!((&w[0]["slots"], &w[0]["client_id"]), (&10.into(), &"stoppable".into()), "{j}");
        assert_eq!(w[0]["fds"].as_array().map(Vec::len), Some(10), "{j}");
        assert_eq!((&j["total"], &j["connections"]), (&1.into(), &10.into()), "{j}");
        let out = run(&cfg, &["admin", "workers", "-s", &addr, "--raw"]);
        assert_eq!(table_rows(&out.stdout).len(), 11, "{ctx}: {}", out.stdout);
    }
}

#[test]
fn two_unnamed_worker_processes_are_two_rows() {
    let cfg = config("");
    let srv = Ours::start(&Opts::default());
    let addr = srv.addr().to_string();
    let spawn = || {
        ChildGuard(
            Command::new(env!("CARGO_BIN_EXE_gearframe"))
                .arg("-c")
                .arg(&cfg.path)
                .args(["-q", "worker", "-s", &addr, "-t", "2", "-f", "unnamed", "--", "cat"])
                .env_remove("GEARMAN_SERVERS")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let (a, b) = (spawn(), spawn());
    eventually(LIMIT, "4 slots", || (registered(&addr, "unnamed") == 4).then_some(()));
    let j = run(&cfg, &["admin", "workers", "unnamed", "-s", &addr, "--json"]).json();
    let mut ids: Vec<String> = j["servers"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            assert_eq!(w["slots"], 2, "{j}");
            w["client_id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    let mut want =
        vec![format!("gearframe-worker-{}", a.id()), format!("gearframe-worker-{}", b.id())];
    want.sort();
    assert_eq!(ids, want, "{j}");
}

#[test]
fn unknown_functions_exit_1_for_every_command_naming_one() {
    let cfg = config("");
    for srv in servers() {
        let addr = srv.addr();
        let ctx = srv.name();
        for cmd in [
            &["workers", "nosuch_fn"][..],
            &["stop-workers", "nosuch_fn"][..],
            &["clear", "nosuch_fn"][..],
            &["status", "nosuch_fn"][..],
            &["drop", "nosuch_fn"][..],
        ] {
            let mut args = vec!["admin", "-s", &addr];
            args.extend_from_slice(cmd);
            let out = run(&cfg, &args);
            assert_eq!(out.code(), Some(1), "{ctx} {cmd:?}: {}{}", out.stdout, out.stderr);
            assert_eq!(out.stderr.lines().count(), 1, "{ctx} {cmd:?}: {}", out.stderr);
            assert!(out.stderr.contains("nosuch_fn"), "{ctx} {cmd:?}: {}", out.stderr);
            assert!(out.stderr.contains(&addr), "{ctx} {cmd:?}: {}", out.stderr);
        }
    }
}

#[test]
fn drop_says_what_holds_the_function() {
    let cfg = config("");
    for srv in servers() {
        let addr = srv.addr();
        let ctx = srv.name();
        let _w = Gated::start(&addr, "holder", 1, &["held_w"]);
        eventually(LIMIT, "the worker", || (registered(&addr, "held_w") == 1).then_some(()));
        let out = run(&cfg, &["admin", "drop", "held_w", "-s", &addr]);
        assert_eq!(out.code(), Some(1), "{ctx}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("1 connected worker"), "{ctx}: {}", out.stderr);
        submit_many(&addr, "held_q", 3, Priority::Normal);
        let out = run(&cfg, &["admin", "drop", "held_q", "-s", &addr]);
        if out.code() == Some(0) {
            // gearmand drops a function with queued jobs.
            assert_eq!(figures(&addr, "held_q"), None, "{ctx}");
            continue;
        }
        assert_eq!(out.code(), Some(1), "{ctx}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("3 queued jobs"), "{ctx}: {}", out.stderr);
        assert!(!out.stderr.contains("connected worker"), "{ctx}: {}", out.stderr);
    }
}

#[test]
fn cancel_with_two_servers_cancels_one_job() {
    let cfg = config("");
    // Two servers told to issue the same handles (by default the prefix
    // names the server, so they differ).
    let same = || {
        Ours::with_config(ServerConfig {
            job_handle_prefix: Some("H:twin".into()),
            ..ServerConfig::default()
        })
    };
    let (a, b) = (same(), same());
    let (a, b) = (a.addr().to_string(), b.addr().to_string());
    let ha = client(&a).submit_background("cn", "a").unwrap().as_str().to_string();
    let hb = client(&b).submit_background("cn", "b").unwrap().as_str().to_string();
    assert_eq!(ha, hb, "both servers were told to use one prefix");
    let both = format!("{a},{b}");
    let out = run(&cfg, &["admin", "cancel", &ha, "-s", &both]);
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let queued = |addr: &str| admin(addr).show_jobs().unwrap().len();
    assert_eq!(queued(&a), 0, "the job of the first server was not cancelled");
    assert_eq!(queued(&b), 1, "the job of the second server was cancelled too");
}

#[test]
fn interrupted_stop_workers_cancels_its_shutdown_jobs() {
    let cfg = config("");
    for srv in servers() {
        let addr = srv.addr();
        let ctx = srv.name();
        // One busy slot: its shutdown job waits behind the running job.
        let busy = Command::new(env!("CARGO_BIN_EXE_gearframe"))
            .arg("-c")
            .arg(&cfg.path)
            .args(["-q", "worker", "-s", &addr, "--name", "busy", "-t", "1", "--grace", "0s"])
            .args(["-f", "sw_busy", "--", "sleep", "60"])
            .env_remove("GEARMAN_SERVERS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let busy = ChildGuard(busy);
        eventually(LIMIT, "the worker", || (registered(&addr, "sw_busy") == 1).then_some(()));
        client(&addr).submit_background("sw_busy", "hold").unwrap();
        eventually(LIMIT, "the job to run", || {
            (figures(&addr, "sw_busy") == Some((1, 1, 1))).then_some(())
        });

        let mut stop =
            spawn_admin(&cfg, &["stop-workers", "sw_busy", "--wait", "120s", "-s", &addr], &[]);
        eventually(LIMIT, "the shutdown job to be queued", || {
            (figures(&addr, "sw_busy").is_some_and(|f| f.0 == 2)).then_some(())
        });
        let kill = Command::new("kill").args(["-INT", &stop.id().to_string()]).status().unwrap();
        assert!(kill.success());
        let status =
            eventually(LIMIT, "stop-workers to exit on SIGINT", || stop.0.try_wait().unwrap());
        assert_eq!(status.code(), Some(130), "{ctx}: {status}");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut stop.0.stderr.take().unwrap(), &mut err).unwrap();
        assert!(err.contains("cancelled 1 shutdown job"), "{ctx}: {err}");
        let live: Vec<_> =
            admin(&addr).show_jobs().unwrap().into_iter().filter(|j| !j.ignored).collect();
        assert_eq!(live.len(), 1, "{ctx}: only the busy job is left: {live:?}");

        // The busy worker goes (its job with it); a worker started
        // afterwards runs jobs and stays.
        let term = Command::new("kill").args(["-TERM", &busy.id().to_string()]).status().unwrap();
        assert!(term.success());
        let mut busy = busy;
        eventually(LIMIT, "the busy worker to exit", || busy.0.try_wait().unwrap());
        eventually(LIMIT, "the busy worker to go", || {
            (registered(&addr, "sw_busy") == 0).then_some(())
        });
        let mut later = worker_process(&cfg, &addr, "sw_busy", 1);
        eventually(LIMIT, "the later worker", || (registered(&addr, "sw_busy") == 1).then_some(()));
        let c = client(&addr);
        let r = c.submit("sw_busy", "ping").unwrap();
        assert!(matches!(r, gearframe::client::JobOutcome::Complete { .. }), "{ctx}: {r:?}");
        // Nothing queued is left to stop it, and it stays.
        eventually(LIMIT, "the queue to empty", || {
            (figures(&addr, "sw_busy").is_none_or(|f| f.0 == 0)).then_some(())
        });
        assert!(later.0.try_wait().unwrap().is_none(), "{ctx}: the later worker was stopped");
        assert_eq!(registered(&addr, "sw_busy"), 1, "{ctx}");
    }
}
