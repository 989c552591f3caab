//! gearadmin's flags on `gearframe admin`: the same scripts run through
//! `gearadmin` and `gearframe admin` back to back on the same quiesced
//! server (gearmand and gearframe's), stdout compared byte for byte, exit
//! codes and `ERR` answers on stderr too.

use std::process::{Command, Stdio};

use gearframe::proto::Priority;

use crate::admin::{Cfg, Gated, LIMIT, Srv, config, registered, run, servers, submit_many};
use crate::support::{self, eventually, free_port};

/// What one run printed and how it ended.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

fn gearadmin(bin: &std::path::Path, args: &[&str]) -> Ran {
    let out = Command::new(bin).args(args).stdin(Stdio::null()).output().unwrap();
    Ran { code: out.status.code(), stdout: out.stdout, stderr: out.stderr }
}

fn ours(cfg: &Cfg, args: &[&str]) -> Ran {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    let out = run(cfg, &all);
    Ran { code: out.code(), stdout: out.stdout.into_bytes(), stderr: out.stderr.into_bytes() }
}

/// Connections without client id or functions (the admin connection of
/// the run itself, idle clients) get a new fd in every run, and with it
/// another place in `workers`: they are counted, not compared in place.
fn normalise(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    let mut anonymous = 0;
    let mut kept: String = text
        .split_inclusive('\n')
        .filter(|l| {
            let bare = l.split_once(' ').is_some_and(|(fd, rest)| {
                fd.parse::<u32>().is_ok() && rest.trim_end().ends_with(" - :")
            });
            anonymous += usize::from(bare);
            !bare
        })
        .collect();
    kept.push_str(&format!("[{anonymous} connections without client id or functions]"));
    kept
}

fn compare(srv: &Srv, bin: &std::path::Path, cfg: &Cfg, script: &[&str]) -> Ran {
    let port = srv.port().to_string();
    let mut args = vec!["-h", "127.0.0.1", "-p", &port];
    args.extend_from_slice(script);
    let theirs = gearadmin(bin, &args);
    let mine = ours(cfg, &args);
    let ctx = format!("{} {script:?}", srv.name());
    assert_eq!(mine.code, theirs.code, "{ctx}: exit codes; ours: {mine:?}");
    assert_eq!(
        normalise(&mine.stdout),
        normalise(&theirs.stdout),
        "{ctx}: stdout differs; stderr ours {:?} theirs {:?}",
        String::from_utf8_lossy(&mine.stderr),
        String::from_utf8_lossy(&theirs.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&mine.stderr),
        String::from_utf8_lossy(&theirs.stderr),
        "{ctx}: stderr"
    );
    mine
}

#[test]
fn gearadmin_scripts_print_the_same_through_gearframe_admin() {
    let Some(bin) = support::peer("gearadmin") else { return };
    let cfg = config("");
    for srv in servers() {
        let addr = srv.addr();
        let ctx = srv.name();
        // A worker waiting for jobs, and queued jobs of functions nobody
        // serves: a state that stays put between the two runs.
        let _w = Gated::start(&addr, "ga-worker", 2, &["ga_idle"]);
        eventually(LIMIT, "the worker's registrations", || {
            (registered(&addr, "ga_idle") == 2).then_some(())
        });
        submit_many(&addr, "ga_high", 2, Priority::High);
        submit_many(&addr, "ga_norm", 3, Priority::Normal);
        submit_many(&addr, "ga_low", 1, Priority::Low);
        let c = crate::admin::client(&addr);
        let to_cancel: Vec<String> = (0..2)
            .map(|i| {
                let job = gearframe::client::Job::new("ga_cancel", "x")
                    .unique(format!("ga-unique-{i}"))
                    .background(true);
                c.submit_background_job(&job).unwrap().as_str().to_string()
            })
            .collect();

        let every = [
            "--status",
            "--workers",
            "--server-version",
            "--getpid",
            "--priority-status",
            "--show-jobs",
            "--show-unique-jobs",
            "--server-verbose",
        ];
        for flag in every {
            let out = compare(&srv, &bin, &cfg, &[flag]);
            assert_eq!(out.code, Some(0), "{ctx} {flag}");
            assert!(!out.stdout.is_empty(), "{ctx} {flag}");
        }
        // All at once: gearadmin's own order, not the order given.
        let out = compare(&srv, &bin, &cfg, &every);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("ga_norm\t3\t0\t0\n"), "{ctx}: {text}");
        assert!(text.contains("ga_high\t2\t0\t0\t0\n"), "{ctx}: {text}");
        let mut reversed = every;
        reversed.reverse();
        compare(&srv, &bin, &cfg, &reversed);

        // Answers that are errors: stderr, exit code 0, as gearadmin.
        let out = compare(&srv, &bin, &cfg, &["--cancel-job", "H:nobody:1"]);
        assert!(out.stdout.is_empty() && out.stderr.starts_with(b"Error: "), "{ctx}: {out:?}");
        compare(&srv, &bin, &cfg, &["--drop-function", "ga_nosuch"]);
        // Changes, each applied once per tool, leaving the state as it was.
        let out = compare(
            &srv,
            &bin,
            &cfg,
            &["--create-function", "ga_new", "--drop-function", "ga_new"],
        );
        assert_eq!(out.stdout, b"OK\nOK\n", "{ctx}");
        // Cancelling a real job: each tool cancels its own.
        let port = srv.port().to_string();
        let base = ["-h", "127.0.0.1", "-p", &port, "--cancel-job"];
        let theirs = gearadmin(&bin, &[&base[..], &[to_cancel[0].as_str()]].concat());
        let mine = ours(&cfg, &[&base[..], &[to_cancel[1].as_str()]].concat());
        assert_eq!((mine.code, &mine.stdout), (theirs.code, &theirs.stdout), "{ctx}");
        assert_eq!(mine.stdout, b"OK\n", "{ctx}: {mine:?}");
        compare(&srv, &bin, &cfg, &["--show-jobs", "--status"]);

        // No server there: nothing on stdout, exit 1, from both.
        let dead = free_port().to_string();
        let theirs = gearadmin(&bin, &["-h", "127.0.0.1", "-p", &dead, "--status"]);
        let mine = ours(&cfg, &["-h", "127.0.0.1", "-p", &dead, "--status"]);
        assert_eq!((mine.code, &mine.stdout), (theirs.code, &theirs.stdout), "{ctx}: {mine:?}");
        assert_eq!(mine.code, Some(1));
        assert_eq!(String::from_utf8_lossy(&mine.stderr).lines().count(), 1, "{mine:?}");
        assert!(String::from_utf8_lossy(&mine.stderr).contains(&dead), "{mine:?}");
    }
}

#[test]
fn bare_admin_prints_its_help_and_flags_mix_with_no_subcommand() {
    let cfg = config("");
    // As a bare `gearframe`: the help on stderr, exit 2.
    let out = run(&cfg, &["admin"]);
    assert_eq!(out.code(), Some(2), "{}{}", out.stdout, out.stderr);
    for word in ["Commands:", "stop-workers", "watch", "--status", "--show-jobs", "Exit codes"] {
        assert!(out.stderr.contains(word), "{word}: {}", out.stderr);
    }
    // `admin -h` is gearadmin's host; the subcommands keep `-h` for help.
    for sub in ["status", "priority", "watch", "stop-workers"] {
        let out = run(&cfg, &["admin", sub, "-h"]);
        assert_eq!(out.code(), Some(0), "{sub}: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains(&format!("Usage: gearframe admin {sub}")), "{}", out.stdout);
    }
    let out = run(&cfg, &["admin", "--status", "status"]);
    assert_eq!(out.code(), Some(2), "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}
