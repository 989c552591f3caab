//! gearadmin's own flags on `gearframe admin` (`--status`, `--workers`,
//! ...), with gearadmin's output: the server's raw answer, so scripts that
//! parse gearadmin's stdout switch by changing the command name.
//!
//! As gearadmin 1.1 does, one connection per server runs the requested
//! commands in a fixed order (not the order of the flags): getpid, create
//! function, drop function, show jobs, show unique jobs, cancel job,
//! verbose, version, workers, prioritystatus, status. Each answer is
//! printed as the server sent it, except that a leading `OK ` is removed
//! and a bare `OK` prints as `OK`; an `ERR` answer goes to stderr as
//! `Error: ...` and does not change the exit code. Exit code 1 when a
//! server cannot be reached or closes the connection, else 0.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::Failure;

/// The commands of gearadmin's flags, in gearadmin's order of execution.
#[derive(Debug, Default)]
pub(super) struct Script {
    pub(super) getpid: bool,
    pub(super) create_function: Option<String>,
    pub(super) drop_function: Option<String>,
    pub(super) show_jobs: bool,
    pub(super) show_unique_jobs: bool,
    pub(super) cancel_job: Option<String>,
    pub(super) server_verbose: bool,
    pub(super) server_version: bool,
    pub(super) workers: bool,
    pub(super) priority_status: bool,
    pub(super) status: bool,
}

impl Script {
    /// `(command line, whether the answer is a `.`-terminated list)`.
    fn commands(&self) -> Vec<(String, bool)> {
        let mut v = Vec::new();
        let mut add = |on: bool, line: String, list: bool| {
            if on {
                v.push((line, list));
            }
        };
        add(self.getpid, "getpid".into(), false);
        if let Some(f) = &self.create_function {
            add(true, format!("create function {f}"), false);
        }
        if let Some(f) = &self.drop_function {
            add(true, format!("drop function {f}"), false);
        }
        add(self.show_jobs, "show jobs".into(), true);
        add(self.show_unique_jobs, "show unique jobs".into(), true);
        if let Some(h) = &self.cancel_job {
            add(true, format!("cancel job {h}"), false);
        }
        add(self.server_verbose, "verbose".into(), false);
        add(self.server_version, "version".into(), false);
        add(self.workers, "workers".into(), true);
        add(self.priority_status, "prioritystatus".into(), true);
        add(self.status, "status".into(), true);
        v
    }

    /// True when any flag was given.
    pub(super) fn is_empty(&self) -> bool {
        self.commands().is_empty()
    }
}

/// Whether `buf` holds a whole answer: one line, or a list up to its `.`
/// line (an `ERR` line ends a list too).
fn complete(buf: &[u8], list: bool) -> bool {
    if !buf.contains(&b'\n') {
        return false;
    }
    if !list || buf.starts_with(b"ERR") {
        return true;
    }
    buf == b".\n" || buf == b".\r\n" || buf.ends_with(b"\n.\n") || buf.ends_with(b"\n.\r\n")
}

/// Reads one answer; `None` when the server closed the connection first.
fn answer(s: &mut TcpStream, list: bool, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while !complete(&buf, list) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Some(buf))
}

/// What gearadmin prints for an answer: `(stdout, stderr)` bytes.
fn render(answer: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if answer.starts_with(b"OK\r") {
        (b"OK\n".to_vec(), Vec::new())
    } else if let Some(rest) = answer.strip_prefix(b"OK ") {
        (rest.to_vec(), Vec::new())
    } else if let Some(rest) = answer.strip_prefix(b"ERR ") {
        let mut e = b"Error: ".to_vec();
        e.extend_from_slice(rest);
        (Vec::new(), e)
    } else {
        (answer.to_vec(), Vec::new())
    }
}

/// Runs the script on each server in turn.
pub(super) fn run(script: &Script, servers: &[String], timeout: Duration) -> ExitCode {
    for (line, _) in script.commands() {
        if line.contains(['\r', '\n']) {
            eprintln!("gearframe: error: {line:?} holds a line break: give a name without one");
            return ExitCode::from(2);
        }
    }
    let mut code = ExitCode::SUCCESS;
    for server in servers {
        if let Err(Failure(m)) = run_one(script, server, timeout) {
            eprintln!("Error: {m}");
            code = ExitCode::FAILURE;
        }
    }
    code
}

fn run_one(script: &Script, server: &str, timeout: Duration) -> Result<(), Failure> {
    let connect_err = |e: &dyn std::fmt::Display| {
        Failure(format!(
            "Failed to connect on {server}: {e} (is a job server running there? give it with -h HOST -p PORT or -s HOST:PORT)"
        ))
    };
    let mut s = gearframe::conn::connect_stream(server, timeout).map_err(|e| connect_err(&e))?;
    let _ = s.set_nodelay(true);
    s.set_write_timeout(Some(timeout)).map_err(|e| connect_err(&e))?;
    let out = io::stdout();
    let err = io::stderr();
    for (line, list) in script.commands() {
        let io_err = |e: io::Error| Failure(format!("`{line}` on {server} failed: {e}"));
        s.write_all(format!("{line}\r\n").as_bytes()).map_err(io_err)?;
        let Some(a) = answer(&mut s, list, timeout).map_err(io_err)? else {
            return Err(Failure(format!(
                "Socket was shutdown while reading from {server} (the server closed the connection after `{line}`)"
            )));
        };
        let (o, e) = render(&a);
        // A closed stdout (`| head`) is not an error of the server: the
        // remaining commands still run, as with gearadmin.
        let mut o_lock = out.lock();
        let _ = o_lock.write_all(&o).and_then(|()| o_lock.flush());
        drop(o_lock);
        let _ = err.lock().write_all(&e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_print_as_gearadmin_prints_them() {
        assert_eq!(render(b"OK\r\n"), (b"OK\n".to_vec(), vec![]));
        assert_eq!(render(b"OK 1.1.20\n"), (b"1.1.20\n".to_vec(), vec![]));
        assert_eq!(render(b"ERR UNKNOWN_JOB\r\n"), (vec![], b"Error: UNKNOWN_JOB\r\n".to_vec()));
        assert_eq!(render(b"f\t1\t0\t0\n.\n"), (b"f\t1\t0\t0\n.\n".to_vec(), vec![]));
        assert!(complete(b".\n", true));
        assert!(!complete(b"f\t1\t0\t0\n", true));
        assert!(complete(b"f\t1\t0\t0\n.\n", true));
        assert!(complete(b"ERR x\r\n", true));
        assert!(complete(b"OK 5\n", false));
    }

    #[test]
    fn commands_run_in_gearadmin_order() {
        let s = Script {
            status: true,
            getpid: true,
            workers: true,
            cancel_job: Some("H:x:1".into()),
            ..Script::default()
        };
        let lines: Vec<String> = s.commands().into_iter().map(|c| c.0).collect();
        assert_eq!(lines, ["getpid", "cancel job H:x:1", "workers", "status"]);
    }
}
