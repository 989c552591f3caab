//! `gearframe admin watch`: a live table like top.
//!
//! Each refresh reads `status` from every server, sums it per function and
//! shows queued, running, workers and the change of the function's job
//! count (queued + running) per second since the previous refresh
//! (negative: the backlog shrinks). On a terminal the screen is cleared
//! and redrawn; otherwise frames follow each other, separated by a blank
//! line. With `--json`, one JSON object per refresh and line.
//!
//! The function rows are cut to the terminal's height (`LINES`, else the
//! terminal's size) with a `… N more` line, so the header stays on screen.
//! TOTAL WORKERS counts each worker connection once, however many of the
//! shown functions it serves. The watch ends, with exit code 0, as soon as
//! its output is closed (`| head -3`).

use std::collections::{BTreeSet, HashMap};
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gearframe::admin::{Cluster, FunctionStatus, PerServer, sum_status};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::{Value, json};

use super::table::Table;
use super::{Failure, interrupt, problem};

/// Which functions are shown: those named with `-f`, and those matching
/// the pattern; every function when neither is given.
#[derive(Debug, Default)]
pub(super) struct Filter {
    pub(super) functions: Vec<String>,
    pub(super) pattern: Option<String>,
}

impl Filter {
    fn matches(&self, function: &str) -> bool {
        if self.functions.is_empty() && self.pattern.is_none() {
            return true;
        }
        self.functions.iter().any(|f| f == function)
            || self.pattern.as_deref().is_some_and(|p| glob(p.as_bytes(), function.as_bytes()))
    }
}

/// `*` matches any run of characters, `?` one; the rest matches itself.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Writes a frame; `false` when stdout is closed (the reader went away).
fn write_out(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_ok()
}

/// True when stdout is a pipe or socket whose reader is gone.
fn output_closed() -> bool {
    let out = std::io::stdout();
    let mut fds = [PollFd::new(out.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => {
            fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
        }
        _ => false,
    }
}

/// The terminal's `(rows, columns)`, each when known: `LINES` and
/// `COLUMNS`, else the size of the terminal on stdout.
fn terminal_size(tty: bool) -> (Option<usize>, Option<usize>) {
    let env = |name: &str| {
        std::env::var(name).ok().and_then(|l| l.trim().parse::<usize>().ok()).filter(|&n| n > 0)
    };
    let size = if tty { console::Term::stdout().size_checked() } else { None };
    (
        env("LINES").or(size.map(|(rows, _)| usize::from(rows))),
        env("COLUMNS").or(size.map(|(_, cols)| usize::from(cols))),
    )
}

/// Cuts every line of `frame` to `width` characters, so that none wraps.
fn fit_width(frame: &str, width: usize) -> String {
    frame
        .split_inclusive('\n')
        .map(|l| {
            let body = l.strip_suffix('\n').unwrap_or(l);
            if body.chars().count() <= width {
                return l.to_string();
            }
            let mut cut: String = body.chars().take(width).collect();
            if l.ends_with('\n') {
                cut.push('\n');
            }
            cut
        })
        .collect()
}

/// One refresh of one server: its status, filtered, and how many distinct
/// worker connections serve the functions shown.
struct Sample {
    status: Vec<PerServer<Vec<FunctionStatus>>>,
    workers: u64,
}

fn sample(cluster: &Cluster, filter: &Filter) -> Sample {
    let rs = cluster.each(|c| {
        let mut status = c.status()?;
        status.retain(|f| filter.matches(&f.function));
        let shown: BTreeSet<&str> = status.iter().map(|f| f.function.as_str()).collect();
        let workers = match c.workers() {
            Ok(list) => list
                .iter()
                .filter(|w| w.functions.iter().any(|f| shown.contains(f.as_str())))
                .count() as u64,
            Err(e) if e.is_down() => return Err(e),
            // A server that does not list connections to this client
            // (`--admin-allow`): at least the most workers of one function.
            Err(_) => status.iter().map(|f| f.workers).max().unwrap_or(0),
        };
        Ok((status, workers))
    });
    let mut workers = 0;
    let status = rs
        .into_iter()
        .map(|r| PerServer {
            server: r.server,
            result: r.result.map(|(s, w)| {
                workers += w;
                s
            }),
        })
        .collect();
    Sample { status, workers }
}

/// Previous sample: job totals per function and when they were read.
#[derive(Debug, Default)]
struct Rates {
    last: Option<(Instant, HashMap<String, u64>)>,
}

impl Rates {
    /// Per function change per second since the last call (`None` on the first).
    fn update(&mut self, now: Instant, totals: &[FunctionStatus]) -> HashMap<String, f64> {
        let cur: HashMap<String, u64> =
            totals.iter().map(|f| (f.function.clone(), f.total)).collect();
        let mut out = HashMap::new();
        if let Some((then, prev)) = &self.last {
            let dt = now.duration_since(*then).as_secs_f64().max(1e-3);
            for (f, &t) in &cur {
                let p = prev.get(f).copied().unwrap_or(0);
                out.insert(f.clone(), (t as f64 - p as f64) / dt);
            }
        }
        self.last = Some((now, cur));
        out
    }
}

fn clock() -> (u64, String) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let day = secs % 86_400;
    (secs, format!("{:02}:{:02}:{:02} UTC", day / 3600, day % 3600 / 60, day % 60))
}

fn rate_text(r: Option<&f64>) -> String {
    match r {
        Some(r) => format!("{r:+.1}"),
        None => "-".into(),
    }
}

pub(super) fn run(
    cluster: &Cluster,
    json: bool,
    interval: Duration,
    count: Option<u64>,
    filter: &Filter,
) -> Result<ExitCode, Failure> {
    let (_stop, rx) = interrupt()?;
    let tty = std::io::stdout().is_terminal() && !json;
    let mut rates = Rates::default();
    let mut n = 0u64;
    let mut all_down;
    loop {
        let started = Instant::now();
        let Sample { status: rs, workers } = sample(cluster, filter);
        let totals = sum_status(&rs);
        let per_sec = rates.update(started, &totals);
        let down = rs.iter().filter(|r| r.result.is_err()).count();
        all_down = down == rs.len();
        let (secs, time) = clock();
        if json {
            let servers: Vec<Value> = rs
                .iter()
                .map(|r| match &r.result {
                    Ok(_) => json!({"server": r.server, "up": true, "error": null}),
                    Err(e) => {
                        json!({"server": r.server, "up": false, "error": problem(e)})
                    }
                })
                .collect();
            let functions: Vec<Value> = totals
                .iter()
                .map(|f| {
                    json!({
                        "function": f.function,
                        "queued": f.queued(),
                        "running": f.running,
                        "workers": f.workers,
                        "jobs_per_sec": per_sec.get(&f.function),
                    })
                })
                .collect();
            let line = json!({
                "time": secs,
                "servers": servers,
                "functions": functions,
                "total_workers": workers,
            });
            if !write_out(&format!("{line}\n")) {
                return Ok(ExitCode::SUCCESS);
            }
        } else {
            let mut t = Table::new(&["FUNCTION", "QUEUED", "RUNNING", "WORKERS", "JOBS/S"]);
            let mut sum = (0u64, 0u64, 0f64);
            // Header, blank, table header, TOTAL, blank, server header,
            // one line per server, and the line the cursor rests on.
            let fixed = 7 + rs.len();
            let (rows, columns) = terminal_size(tty);
            let room = rows.map(|h| h.saturating_sub(fixed));
            let shown = match room {
                Some(room) if totals.len() > room => room.saturating_sub(1),
                _ => totals.len(),
            };
            for (i, f) in totals.iter().enumerate() {
                let r = per_sec.get(&f.function);
                sum = (sum.0 + f.queued(), sum.1 + f.running, sum.2 + r.unwrap_or(&0.0));
                if i >= shown {
                    continue;
                }
                t.row(vec![
                    f.function.clone(),
                    f.queued().to_string(),
                    f.running.to_string(),
                    f.workers.to_string(),
                    rate_text(r),
                ]);
            }
            if shown < totals.len() {
                let more = totals.len() - shown;
                t.note(&format!("… {more} more"), format!("function{}", plural(more)));
            }
            t.row(vec![
                "TOTAL".into(),
                sum.0.to_string(),
                sum.1.to_string(),
                workers.to_string(),
                rate_text((!per_sec.is_empty() || n > 0).then_some(&sum.2)),
            ]);
            let mut frame = String::new();
            frame.push_str(&format!(
                "gearframe admin watch  {} server{} ({} down)  every {:?}  {time}  (Ctrl-C to quit)\n\n",
                rs.len(),
                if rs.len() == 1 { "" } else { "s" },
                down,
                interval
            ));
            frame.push_str(&t.render());
            frame.push('\n');
            let mut s = Table::new(&["SERVER", "STATE"]);
            for r in &rs {
                match &r.result {
                    Ok(list) => s.row(vec![
                        r.server.clone(),
                        format!(
                            "up, {} function{}",
                            list.len(),
                            if list.len() == 1 { "" } else { "s" }
                        ),
                    ]),
                    Err(e) => s.note(&r.server, problem(e)),
                }
            }
            frame.push_str(&s.render());
            if !tty {
                frame.push('\n');
            }
            if let Some(width) = columns {
                frame = fit_width(&frame, width);
            }
            if tty {
                frame.insert_str(0, "\x1b[H\x1b[2J");
            }
            if !write_out(&frame) {
                return Ok(ExitCode::SUCCESS);
            }
        }
        n += 1;
        if count.is_some_and(|c| n >= c) {
            break;
        }
        // Wait for the next refresh in short steps, to end at once when
        // the output is closed.
        let deadline = started + interval;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if rx.recv_timeout(left.min(Duration::from_millis(100))).is_ok() {
                return Ok(ExitCode::SUCCESS);
            }
            if output_closed() {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    Ok(if all_down && count.is_some() {
        eprintln!("gearframe: error: no server could be reached");
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_to_the_width() {
        assert_eq!(fit_width("abcdef\nab\n\n", 3), "abc\nab\n\n");
        assert_eq!(fit_width("… 3 more", 3), "… 3");
    }

    #[test]
    fn patterns() {
        assert!(glob(b"resize*", b"resize_big"));
        assert!(glob(b"*big", b"resize_big"));
        assert!(!glob(b"r?s*", b"rsz_x"));
        assert!(glob(b"r?s*", b"ras"));
        assert!(!glob(b"resize", b"resize_big"));
        let f = Filter { functions: vec!["a".into()], pattern: Some("b*".into()) };
        assert!(f.matches("a") && f.matches("bx") && !f.matches("c"));
        assert!(Filter::default().matches("anything"));
    }

    #[test]
    fn rates_are_change_per_second() {
        let f = |t| FunctionStatus { function: "a".into(), total: t, running: 0, workers: 0 };
        let mut r = Rates::default();
        let t0 = Instant::now();
        assert!(r.update(t0, &[f(100)]).is_empty());
        let got = r.update(t0 + Duration::from_secs(2), &[f(40)]);
        assert_eq!(got["a"], -30.0);
    }
}
