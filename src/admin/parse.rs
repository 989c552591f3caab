//! Parsers for admin reply lines (without their line ending).
//!
//! Rows must have exactly their listing's columns: a row with more is the
//! tail of a function name holding a line break (the forged row's columns
//! followed by the real ones), see the module docs of [`super`].

use super::{FunctionStatus, JobInfo, PriorityStatus, StoreStatus, WorkerInfo};

fn num(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

/// `function\ttotal\trunning\tworkers`.
pub(super) fn status_line(l: &str) -> Option<FunctionStatus> {
    let f: Vec<&str> = l.split('\t').collect();
    if f.len() != 4 {
        return None;
    }
    Some(FunctionStatus {
        function: f[0].to_string(),
        total: num(f[1])?,
        running: num(f[2])?,
        workers: num(f[3])?,
    })
}

/// `function\thigh\tnormal\tlow\tworkers`.
pub(super) fn priority_line(l: &str) -> Option<PriorityStatus> {
    let f: Vec<&str> = l.split('\t').collect();
    if f.len() != 5 {
        return None;
    }
    Some(PriorityStatus {
        function: f[0].to_string(),
        high: num(f[1])?,
        normal: num(f[2])?,
        low: num(f[3])?,
        workers: num(f[4])?,
    })
}

/// `fd ip client-id : f1 f2`, or `fd ip client-id :` with no functions.
/// The client id may contain spaces, so the functions are what follows the
/// last ` : ` (function names cannot contain spaces on this protocol).
pub(super) fn workers_line(l: &str) -> Option<WorkerInfo> {
    let (head, funcs) = if let Some(h) = l.strip_suffix(" :") {
        (h, "")
    } else {
        let i = l.rfind(" : ")?;
        (&l[..i], &l[i + 3..])
    };
    let mut parts = head.splitn(3, ' ');
    let fd = parts.next()?.trim().parse().ok()?;
    let ip = parts.next()?.to_string();
    let client_id = parts.next().unwrap_or("").to_string();
    Some(WorkerInfo {
        fd,
        ip,
        client_id,
        functions: funcs.split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect(),
    })
}

/// `handle\tretries\tignore\tqueued`.
pub(super) fn job_line(l: &str) -> Option<JobInfo> {
    let f: Vec<&str> = l.split('\t').collect();
    if f.len() != 4 {
        return None;
    }
    Some(JobInfo {
        handle: f[0].to_string(),
        retries: num(f[1])?,
        ignored: num(f[2])? != 0,
        persisted: num(f[3])? != 0,
    })
}

/// `memory`, `sqlite PATH DURABILITY ok rows=N` or
/// `sqlite PATH DURABILITY failing rows=N since=UNIX error=TEXT` (the path
/// may contain spaces: it ends before the durability word).
pub(super) fn store_line(l: &str) -> Option<StoreStatus> {
    if l == "memory" {
        return Some(StoreStatus {
            backend: l.into(),
            path: None,
            durability: None,
            ok: true,
            rows: 0,
            failing_since: None,
            error: None,
        });
    }
    let (backend, rest) = l.split_once(' ')?;
    let (path, durability, tail) = ["sync", "on-shutdown"].iter().find_map(|d| {
        let at = rest.find(&format!(" {d} "))?;
        Some((&rest[..at], *d, &rest[at + d.len() + 2..]))
    })?;
    let (state, fields) = tail.split_once(' ')?;
    let rows = num(fields.split(' ').next()?.strip_prefix("rows=")?)?;
    let (ok, failing_since, error) = match state {
        "ok" => (true, None, None),
        "failing" => {
            let mut parts = fields.splitn(3, ' ').skip(1);
            let since = num(parts.next()?.strip_prefix("since=")?)?;
            let error = parts.next()?.strip_prefix("error=")?.to_string();
            (false, Some(since), Some(error))
        }
        _ => return None,
    };
    Some(StoreStatus {
        backend: backend.into(),
        path: Some(path.into()),
        durability: Some(durability.into()),
        ok,
        rows,
        failing_since,
        error,
    })
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let d = |c: u8| (c as char).to_digit(16);
    Some((d(two[0])? * 16 + d(two[1])?) as u8)
}

/// Decodes the text of an `ERR` line: `+` is a space and `%XX` a byte.
pub fn decode_text(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match b.get(i + 1..i + 3).and_then(hex_byte) {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits an `ERR CODE text` line into the code and the decoded text.
///
/// gearmand also sends free text after `ERR` (`ERR there are still
/// connected workers or executing clients`): a first word that is not a
/// code (upper case, or with an underscore as Perl's `unknown_command`)
/// makes the whole line the text, with the code `ERROR`.
pub fn parse_error_line(line: &str) -> (String, String) {
    let rest = line.strip_prefix("ERR").unwrap_or(line).trim();
    let (first, text) = rest.split_once(' ').unwrap_or((rest, ""));
    let is_code = !first.is_empty()
        && first.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && (first.contains('_') || !first.chars().any(|c| c.is_ascii_lowercase()));
    if is_code {
        (first.to_ascii_uppercase(), decode_text(text.trim()))
    } else {
        ("ERROR".to_string(), decode_text(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let s = status_line("rev\t3\t1\t2").unwrap();
        assert_eq!((s.function.as_str(), s.total, s.running, s.workers), ("rev", 3, 1, 2));
        assert_eq!(s.queued(), 2);
        assert!(status_line("rev\t3\t1").is_none());
        assert!(status_line("rev\tx\t1\t2").is_none());
        // The rows a name like `evil\n.\nfake\t9\t9\t9` makes gearmand print.
        assert!(status_line("evil").is_none());
        assert!(status_line("fake\t9\t9\t9\t0\t0\t1").is_none());
        assert!(priority_line("fake\t9\t9\t9\t0\t0\t0\t1").is_none());
        let p = priority_line("mq2\t1\t2\t1\t0").unwrap();
        assert_eq!((p.high, p.normal, p.low, p.workers), (1, 2, 1, 0));
    }

    #[test]
    fn workers_lines() {
        let w = workers_line("38 127.0.0.1 - :").unwrap();
        assert_eq!((w.fd, w.ip.as_str(), w.client_id.as_str()), (38, "127.0.0.1", "-"));
        assert!(w.functions.is_empty());
        let w = workers_line("39 127.0.0.1 worker-1 : other slow rev rev").unwrap();
        assert_eq!(w.client_id, "worker-1");
        assert_eq!(w.functions, ["other", "slow", "rev", "rev"]);
        let w = workers_line("7 ::1 my worker : a : b").unwrap();
        assert_eq!(w.client_id, "my worker : a");
        assert_eq!(w.functions, ["b"]);
        let w = workers_line("7 10.0.0.1 name with spaces :").unwrap();
        assert_eq!(w.client_id, "name with spaces");
        assert!(workers_line("garbage").is_none());
        // A client id holding `\n.\n`, as gearmand prints it.
        assert!(workers_line("38 127.0.0.1 evil").is_none());
    }

    #[test]
    fn store_lines() {
        let s = store_line("sqlite /var/q 1.db sync failing rows=3 since=17 error=q: disk full")
            .unwrap();
        assert_eq!(
            (s.path.as_deref(), s.durability.as_deref(), s.ok, s.rows),
            (Some("/var/q 1.db"), Some("sync"), false, 3)
        );
        assert_eq!((s.failing_since, s.error.as_deref()), (Some(17), Some("q: disk full")));
        let s = store_line("sqlite /q.db on-shutdown ok rows=0").unwrap();
        assert!(s.ok && s.error.is_none() && s.durability.as_deref() == Some("on-shutdown"));
        assert_eq!(store_line("memory").unwrap().backend, "memory");
        assert_eq!(store_line("sqlite /q.db sync maybe rows=1"), None);
    }

    #[test]
    fn job_lines() {
        let j = job_line("H:vm:4\t1\t0\t1").unwrap();
        assert_eq!(
            (j.handle.as_str(), j.retries, j.ignored, j.persisted),
            ("H:vm:4", 1, false, true)
        );
        assert!(job_line("H:vm:4\t1\t0\t1\t0").is_none());
    }

    #[test]
    fn error_lines() {
        assert_eq!(
            parse_error_line("ERR UNKNOWN_COMMAND Unknown+server+commandfoo"),
            ("UNKNOWN_COMMAND".into(), "Unknown server commandfoo".into())
        );
        assert_eq!(parse_error_line("ERR UNKNOWN_JOB"), ("UNKNOWN_JOB".into(), String::new()));
        assert_eq!(
            parse_error_line("ERR there are still connected workers or executing clients"),
            ("ERROR".into(), "there are still connected workers or executing clients".into())
        );
        assert_eq!(
            parse_error_line("ERR unknown_command Unknown%20command%"),
            ("UNKNOWN_COMMAND".into(), "Unknown command%".into())
        );
        assert_eq!(decode_text("a%2Bb+c%zz%4"), "a+b c%zz%4");
    }
}
