//! The command line as a user meets it: help on a bare command, suggestions
//! for typos, defaults in `--help`, and config and log file errors that
//! name the key, its line and what to write.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn gearframe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args(args)
        .env_remove("GEARMAN_SERVERS")
        .env_remove("GEARFRAME_CONFIG")
        .env_remove("RUST_LOG")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn config(body: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(body.as_bytes()).unwrap();
    f
}

#[test]
fn bare_command_prints_the_command_list() {
    let out = gearframe(&[]);
    assert_eq!(out.status.code(), Some(2));
    let help = text(&out.stderr) + &text(&out.stdout);
    for cmd in ["server", "worker", "submit", "send", "admin", "up"] {
        assert!(help.contains(&format!("\n  {cmd} ")), "{cmd} missing in {help}");
    }
    assert!(help.contains("Usage: gearframe"), "{help}");
}

#[test]
fn typos_get_a_suggestion_and_a_pointer_to_help_in_one_line() {
    let cases: [(&[&str], &str); 3] = [
        (&["sumbit", "-f", "x"], "a similar subcommand exists: 'submit'"),
        (&["submit", "--functon", "x"], "a similar argument exists: '--function'"),
        (&["server", "--max-job", "3"], "a similar argument exists: '--max-jobs'"),
    ];
    for (args, tip) in cases {
        let out = gearframe(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(tip), "{args:?}: {err}");
        assert!(err.contains("try '--help'"), "{args:?}: {err}");
    }
}

#[test]
fn server_help_shows_defaults() {
    let out = gearframe(&["server", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    let line = |flag: &str| {
        help.lines()
            .find(|l| l.contains(flag))
            .unwrap_or_else(|| panic!("{flag}: {help}"))
            .to_string()
    };
    assert!(line("--listen").contains("[default: 127.0.0.1:4730]"), "{help}");
    assert!(line("--job-retries").contains("[default: 0]"), "{help}");
    assert!(line("--write-timeout").contains("[default: 30s]"), "{help}");
    assert!(line("--max-packet-size").contains("[default: 67108864]"), "{help}");
    assert!(line("--busy-poll").contains("[default: 100us]"), "{help}");
}

#[test]
fn config_errors_name_the_key_its_line_and_what_to_write() {
    let cases = [
        (
            "worker:\n  threads: 2\n  functions:\n    resize:\n      command: [convert]\n      timeout: 15\n",
            "line 6 column 7: worker.functions.resize.timeout: invalid duration `15`: write a number with a unit, such as 100us, 500ms, 15s",
        ),
        (
            "server:\n  listen: 127.0.0.1:0\n  job_retrys: 3\n",
            "line 3 column 3: server.job_retrys: unknown field `job_retrys`",
        ),
        (
            "client:\n  servers: [a]\n  window: lots\n",
            "line 3 column 3: client.window: invalid type: string \"lots\"",
        ),
        (
            "worker:\n  functions:\n    f:\n      command: []\n",
            "line 4 column 7: worker.functions.f.command: give the program and its arguments as a list",
        ),
        (
            "# a comment\nworker:\n  servers: \"a,http://b\"\n",
            "line 3 column 3: worker.servers: bad server `http://b`: a server address has no scheme",
        ),
    ];
    for (body, want) in cases {
        let cfg = config(body);
        let path = cfg.path().to_str().unwrap();
        let out = gearframe(&["-c", path, "admin", "-s", "127.0.0.1:1", "status"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{body}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&format!("config {path}: {want}")), "{body}\n{err}");
    }
}

#[test]
fn an_unusable_log_file_is_one_line_at_start_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (dir.path().to_path_buf(), "cannot open", "Is a directory"),
        (dir.path().join("f/x.log"), "cannot create", "File exists"),
    ];
    std::fs::write(dir.path().join("f"), "a file where a directory is needed").unwrap();
    for (file, what, cause) in cases {
        let cfg = config(&format!("log:\n  file: {}\n", file.display()));
        let out = gearframe(&["-c", cfg.path().to_str().unwrap(), "server", "-L", "127.0.0.1:0"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&format!("log.file: {what} ")) && err.contains(cause), "{err}");
        assert!(err.contains("fix log.file"), "{err}");
    }
}
