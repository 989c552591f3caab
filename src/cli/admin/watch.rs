//! `gearframe admin watch`: a live table like top.
//!
//! Each refresh reads `status` from every server, sums it per function and
//! shows queued, running, workers and the change of the function's job
//! count (queued + running) per second since the previous refresh
//! (negative: the backlog shrinks). On a terminal the screen is cleared
//! and redrawn; otherwise frames follow each other, separated by a blank
//! line. With `--json`, one JSON object per refresh and line.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gearframe::admin::{Cluster, FunctionStatus, sum_status};
use serde_json::{Value, json};

use super::table::Table;
use super::{Failure, emit, emit_json, interrupt, problem};

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
) -> Result<ExitCode, Failure> {
    let (_stop, rx) = interrupt()?;
    let tty = std::io::stdout().is_terminal() && !json;
    let mut rates = Rates::default();
    let mut n = 0u64;
    let mut all_down;
    loop {
        let started = Instant::now();
        let rs = cluster.status();
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
                        json!({"server": r.server, "up": false, "error": problem(&r.server, e)})
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
            emit_json(&json!({"time": secs, "servers": servers, "functions": functions}));
        } else {
            let mut t = Table::new(&["FUNCTION", "QUEUED", "RUNNING", "WORKERS", "JOBS/S"]);
            let mut sum = (0u64, 0u64, 0u64, 0f64);
            for f in &totals {
                let r = per_sec.get(&f.function);
                sum = (
                    sum.0 + f.queued(),
                    sum.1 + f.running,
                    sum.2 + f.workers,
                    sum.3 + r.unwrap_or(&0.0),
                );
                t.row(vec![
                    f.function.clone(),
                    f.queued().to_string(),
                    f.running.to_string(),
                    f.workers.to_string(),
                    rate_text(r),
                ]);
            }
            t.row(vec![
                "TOTAL".into(),
                sum.0.to_string(),
                sum.1.to_string(),
                sum.2.to_string(),
                rate_text((!per_sec.is_empty() || n > 0).then_some(&sum.3)),
            ]);
            let mut frame = String::new();
            if tty {
                frame.push_str("\x1b[H\x1b[2J");
            }
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
                    Err(e) => s.note(&r.server, problem(&r.server, e)),
                }
            }
            frame.push_str(&s.render());
            if !tty {
                frame.push('\n');
            }
            emit(&frame);
        }
        n += 1;
        if count.is_some_and(|c| n >= c) {
            break;
        }
        let wait = interval.saturating_sub(started.elapsed());
        if rx.recv_timeout(wait).is_ok() {
            break;
        }
    }
    Ok(if all_down && count.is_some() {
        eprintln!("gearframe: error: no server could be reached");
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
