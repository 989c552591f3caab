//! The text admin protocol: request lines as a server reads them, and the
//! replies an admin client reads back.
//!
//! A line is split on space characters only; a run of spaces is one
//! separator, and a leading space makes the first token empty. Command words
//! are case-insensitive. At most [`MAX_TOKENS`] tokens are allowed.

/// Lines with more tokens than this close the connection (as gearmand does).
pub const MAX_TOKENS: usize = 5;

/// A parsed admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest<'a> {
    /// `workers`: one line per connection.
    Workers,
    /// `status`: per function total, running, workers.
    Status,
    /// `prioritystatus`: per function queued high, normal, low, workers.
    PriorityStatus,
    /// `show jobs`.
    ShowJobs,
    /// `show unique jobs`.
    ShowUniqueJobs,
    /// `getpid`.
    GetPid,
    /// `verbose`.
    Verbose,
    /// `version`.
    Version,
    /// `maxqueue FUNCTION [N | H N L]`: limits for high, normal, low (0 = unlimited).
    MaxQueue {
        /// Function name, matched exactly.
        function: &'a [u8],
        /// Limits per priority.
        limits: [u32; 3],
    },
    /// `cancel job HANDLE`.
    CancelJob {
        /// The job handle.
        handle: &'a [u8],
    },
    /// `create function NAME`.
    CreateFunction {
        /// Function name.
        name: &'a [u8],
    },
    /// `drop function NAME`.
    DropFunction {
        /// Function name, matched exactly (gearmand ignores case).
        name: &'a [u8],
    },
    /// `clear function NAME` (gearframe's own): removes the function's jobs
    /// that no worker runs.
    ClearFunction {
        /// Function name, matched exactly.
        name: &'a [u8],
    },
    /// `store` (gearframe's own): the persistent queue's state, one line
    /// then `.` (see the server's admin docs).
    Store,
    /// `stopping` (gearframe's own): `OK running`, or `OK graceful jobs=N`
    /// while a graceful stop waits for N jobs.
    Stopping,
    /// `shutdown [graceful]`.
    Shutdown {
        /// Drain the jobs first.
        graceful: bool,
    },
    /// A request answered with a fixed error line (ready to send, `\r\n` included).
    Invalid(Vec<u8>),
    /// Too many tokens: the connection is closed without a reply.
    TooManyTokens,
}

impl<'a> AdminRequest<'a> {
    /// The function name the request names, if it names one.
    pub fn function(&self) -> Option<&'a [u8]> {
        match self {
            AdminRequest::MaxQueue { function: name, .. }
            | AdminRequest::CreateFunction { name }
            | AdminRequest::DropFunction { name }
            | AdminRequest::ClearFunction { name } => Some(name),
            _ => None,
        }
    }
}

/// Whether a function name or client id can be shown in an admin listing
/// without forging it: it holds no control character (no byte below 0x20,
/// such as tab, line feed, carriage return or NUL, and no DEL, 0x7f).
///
/// `status` separates its columns with tabs and every listing its rows with
/// line feeds, and a `.` line ends a listing; a name holding these bytes
/// would add rows or end the listing early in every dashboard that reads it.
/// Spaces and bytes above 0x7f (UTF-8) are allowed.
pub fn is_listable_name(name: &[u8]) -> bool {
    !name.iter().any(|&b| b < 0x20 || b == 0x7f)
}

/// Splits an admin line into tokens (see the module docs).
pub fn tokens(line: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    for (i, t) in line.split(|&b| b == b' ').enumerate() {
        if i == 0 || !t.is_empty() {
            out.push(t);
        }
    }
    out
}

fn is(t: &[u8], word: &str) -> bool {
    t.eq_ignore_ascii_case(word.as_bytes())
}

/// C's `atoi` as gearmand applies it to numbers in packets and admin
/// lines: leading blanks, an optional sign and leading digits; anything else
/// ends the number, and no digits give 0.
pub fn atoi(s: &[u8]) -> i64 {
    let s = match s.iter().position(|b| !b.is_ascii_whitespace()) {
        Some(p) => &s[p..],
        None => return 0,
    };
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for &b in digits.iter().take_while(|b| b.is_ascii_digit()) {
        v = v.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    if neg { -v } else { v }
}

/// A maxqueue limit: negative values mean 0 (unlimited).
fn limit(t: &[u8]) -> u32 {
    atoi(t).clamp(0, i64::from(i32::MAX)) as u32
}

fn error_args(word: &[u8]) -> Vec<u8> {
    let mut v =
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+".to_vec();
    v.extend_from_slice(word);
    v.extend_from_slice(b"\r\n");
    v
}

/// The reply to an unknown command word.
pub fn unknown_command(word: &[u8]) -> Vec<u8> {
    let mut v = b"ERR UNKNOWN_COMMAND Unknown+server+command".to_vec();
    v.extend_from_slice(word);
    v.extend_from_slice(b"\r\n");
    v
}

/// Parses one admin line (without its line ending).
pub fn parse_request(line: &[u8]) -> AdminRequest<'_> {
    let t = tokens(line);
    if t.len() > MAX_TOKENS {
        return AdminRequest::TooManyTokens;
    }
    let n = t.len();
    let w = t[0];
    if is(w, "workers") {
        AdminRequest::Workers
    } else if is(w, "status") {
        AdminRequest::Status
    } else if is(w, "prioritystatus") {
        AdminRequest::PriorityStatus
    } else if n >= 3 && is(w, "cancel") {
        if n == 3 && is(t[1], "job") {
            AdminRequest::CancelJob { handle: t[2] }
        } else {
            AdminRequest::Invalid(b"ERR UNKNOWN_ERROR\r\n".to_vec())
        }
    } else if n >= 2 && is(w, "show") {
        if n == 3 && is(t[1], "unique") && is(t[2], "jobs") {
            AdminRequest::ShowUniqueJobs
        } else if n == 2 && is(t[1], "jobs") {
            AdminRequest::ShowJobs
        } else {
            AdminRequest::Invalid(b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n".to_vec())
        }
    } else if is(w, "create") {
        if n == 3 && is(t[1], "function") {
            AdminRequest::CreateFunction { name: t[2] }
        } else {
            AdminRequest::Invalid(error_args(w))
        }
    } else if is(w, "drop") {
        if n == 3 && is(t[1], "function") {
            AdminRequest::DropFunction { name: t[2] }
        } else {
            AdminRequest::Invalid(error_args(w))
        }
    } else if is(w, "clear") {
        if n == 3 && is(t[1], "function") {
            AdminRequest::ClearFunction { name: t[2] }
        } else {
            AdminRequest::Invalid(error_args(w))
        }
    } else if is(w, "maxqueue") {
        if n == 1 {
            return AdminRequest::Invalid(error_args(w));
        }
        let mut limits = [0u32; 3];
        for (p, l) in limits.iter_mut().enumerate() {
            if n > p + 2 {
                *l = limit(t[p + 2]);
            }
        }
        if n <= 3 {
            limits = [limits[0]; 3];
        }
        AdminRequest::MaxQueue { function: t[1], limits }
    } else if is(w, "getpid") {
        AdminRequest::GetPid
    } else if is(w, "shutdown") {
        if n == 1 {
            AdminRequest::Shutdown { graceful: false }
        } else if n == 2 && is(t[1], "graceful") {
            AdminRequest::Shutdown { graceful: true }
        } else {
            AdminRequest::Invalid(error_args(w))
        }
    } else if n == 1 && is(w, "store") {
        AdminRequest::Store
    } else if n == 1 && is(w, "stopping") {
        AdminRequest::Stopping
    } else if is(w, "verbose") {
        AdminRequest::Verbose
    } else if is(w, "version") {
        AdminRequest::Version
    } else {
        AdminRequest::Invalid(unknown_command(w))
    }
}

/// Whether a request's reply is a list ending in a `.` line.
pub fn is_list_command(line: &str) -> bool {
    matches!(
        parse_request(line.as_bytes()),
        AdminRequest::Workers
            | AdminRequest::Status
            | AdminRequest::PriorityStatus
            | AdminRequest::ShowJobs
            | AdminRequest::ShowUniqueJobs
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_collapse_runs_but_keep_a_leading_empty_token() {
        assert_eq!(tokens(b"show  jobs"), vec![&b"show"[..], b"jobs"]);
        assert_eq!(tokens(b" status"), vec![&b""[..], b"status"]);
        assert_eq!(tokens(b""), vec![&b""[..]]);
        assert_eq!(tokens(b"a\tb"), vec![&b"a\tb"[..]]);
    }

    #[test]
    fn commands() {
        assert_eq!(parse_request(b"SHOW JOBS"), AdminRequest::ShowJobs);
        assert_eq!(parse_request(b"status extra args"), AdminRequest::Status);
        assert_eq!(parse_request(b"show unique jobs"), AdminRequest::ShowUniqueJobs);
        assert_eq!(
            parse_request(b"show x"),
            AdminRequest::Invalid(b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n".to_vec())
        );
        assert_eq!(parse_request(b"show"), AdminRequest::Invalid(unknown_command(b"show")));
        assert_eq!(parse_request(b"cancel job H:1"), AdminRequest::CancelJob { handle: b"H:1" });
        assert_eq!(
            parse_request(b"cancel job H:1 x"),
            AdminRequest::Invalid(b"ERR UNKNOWN_ERROR\r\n".to_vec())
        );
        assert_eq!(parse_request(b"cancel job"), AdminRequest::Invalid(unknown_command(b"cancel")));
        assert_eq!(parse_request(b"a b c d e f"), AdminRequest::TooManyTokens);
        assert_eq!(
            parse_request(b"foo"),
            AdminRequest::Invalid(b"ERR UNKNOWN_COMMAND Unknown+server+commandfoo\r\n".to_vec())
        );
        assert_eq!(
            parse_request(b""),
            AdminRequest::Invalid(b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n".to_vec())
        );
    }

    #[test]
    fn maxqueue_arguments() {
        let mq = |l: &'static [u8]| match parse_request(l) {
            AdminRequest::MaxQueue { limits, .. } => limits,
            other => panic!("{other:?}"),
        };
        assert_eq!(mq(b"maxqueue f"), [0, 0, 0]);
        assert_eq!(mq(b"maxqueue f 5"), [5, 5, 5]);
        assert_eq!(mq(b"maxqueue f 1 2"), [1, 2, 0]);
        assert_eq!(mq(b"maxqueue f 1 2 3"), [1, 2, 3]);
        assert_eq!(mq(b"maxqueue f -4 x 7y"), [0, 0, 7]);
        assert!(matches!(parse_request(b"maxqueue"), AdminRequest::Invalid(_)));
    }
}
