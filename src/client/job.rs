//! Jobs, their outcomes and events, handles and status.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::proto::Priority;

/// Longest unique id sent: gearmand stores 63 bytes and refuses more than 64.
pub const MAX_UNIQUE_LEN: usize = 63;

/// A job to submit: function, payload and options.
///
/// ```
/// use gearframe::client::Job;
/// use gearframe::proto::Priority;
/// use std::time::Duration;
///
/// let job = Job::new("reverse", "hello")
///     .priority(Priority::High)
///     .unique("reverse-hello")
///     .timeout(Duration::from_secs(30));
/// assert_eq!(job.function(), "reverse");
/// assert!(!job.is_background());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    function: String,
    payload: Vec<u8>,
    unique: Option<String>,
    priority: Priority,
    background: bool,
    at: Option<u64>,
    timeout: Option<Duration>,
}

impl Job {
    /// A foreground job at normal priority with a generated unique id.
    pub fn new(function: impl Into<String>, payload: impl Into<Vec<u8>>) -> Job {
        Job {
            function: function.into(),
            payload: payload.into(),
            unique: None,
            priority: Priority::Normal,
            background: false,
            at: None,
            timeout: None,
        }
    }

    /// Queue priority (default normal).
    pub fn priority(mut self, p: Priority) -> Job {
        self.priority = p;
        self
    }

    /// The unique id: jobs of one function with the same unique id coalesce
    /// into one execution. Without one a random id is generated, so that a
    /// resubmission after a failure coalesces with the first copy.
    pub fn unique(mut self, unique: impl Into<String>) -> Job {
        self.unique = Some(unique.into());
        self
    }

    /// Background (detached) job: the call returns once the server has
    /// accepted it.
    pub fn background(mut self, yes: bool) -> Job {
        self.background = yes;
        self
    }

    /// An epoch job (SUBMIT_JOB_EPOCH): a background job that does not run
    /// before `when` (second precision). Epoch jobs have normal priority.
    pub fn at(mut self, when: SystemTime) -> Job {
        self.at = Some(when.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
        self.background = true;
        self
    }

    /// An epoch job at a Unix time in seconds (see [`Job::at`]).
    pub fn at_unix(mut self, secs: u64) -> Job {
        self.at = Some(secs);
        self.background = true;
        self
    }

    /// Overall limit for this job, from submission to result (foreground) or
    /// to acceptance (background); overrides the client's default.
    pub fn timeout(mut self, t: Duration) -> Job {
        self.timeout = Some(t);
        self
    }

    /// The function name.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The unique id given by the caller.
    pub fn unique_id(&self) -> Option<&str> {
        self.unique.as_deref()
    }

    /// The priority.
    pub fn get_priority(&self) -> Priority {
        self.priority
    }

    /// True for background and epoch jobs.
    pub fn is_background(&self) -> bool {
        self.background
    }

    /// The Unix time of an epoch job.
    pub fn epoch(&self) -> Option<u64> {
        self.at
    }

    /// The job's own timeout.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.function.is_empty() {
            return Err("the function name is empty".into());
        }
        if self.function.contains('\0') {
            return Err("the function name contains a NUL byte".into());
        }
        if let Some(u) = &self.unique {
            if u.contains('\0') {
                return Err("the unique id contains a NUL byte".into());
            }
            if u.len() > MAX_UNIQUE_LEN {
                return Err(format!(
                    "the unique id is {} bytes; servers keep at most {MAX_UNIQUE_LEN}",
                    u.len()
                ));
            }
        }
        Ok(())
    }
}

/// A job handle and the server that issued it (handles are server-local).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobHandle {
    pub(crate) server: Arc<str>,
    pub(crate) handle: String,
}

impl JobHandle {
    /// A handle issued by `server` (`host:port`).
    pub fn new(server: impl Into<String>, handle: impl Into<String>) -> JobHandle {
        JobHandle { server: Arc::from(server.into()), handle: handle.into() }
    }

    /// The handle, such as `H:host:42`.
    pub fn as_str(&self) -> &str {
        &self.handle
    }

    /// The server that issued it.
    pub fn server(&self) -> &str {
        &self.server
    }
}

impl fmt::Display for JobHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.handle)
    }
}

/// The reason of a failure whose worker sent neither an exception nor a
/// warning.
pub const NO_REASON: &str = "no reason given by the worker";

/// The string inside a Perl `Storable::nfreeze(\$string)`, which Perl's
/// Gearman::Worker sends as the exception of a job that died.
fn perl_storable_string(d: &[u8]) -> Option<&[u8]> {
    // Network order header (major 2), any minor; then a scalar: small
    // (1-byte length) or large (4-byte big-endian length), bytes or UTF-8.
    let (&[5, _], rest) = d.split_at_checked(2)? else { return None };
    let (&kind, rest) = rest.split_first()?;
    let (len, rest) = match kind {
        0x0a | 0x17 => {
            let (&n, rest) = rest.split_first()?;
            (usize::from(n), rest)
        }
        0x01 | 0x18 => {
            let (n, rest) = rest.split_at_checked(4)?;
            (u32::from_be_bytes(n.try_into().ok()?) as usize, rest)
        }
        _ => return None,
    };
    (rest.len() == len).then_some(rest)
}

/// How a job ended, or that a background job was accepted.
///
/// A failed job is an outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobOutcome {
    /// WORK_COMPLETE with the result.
    Complete {
        /// The handle.
        handle: JobHandle,
        /// The result.
        data: Vec<u8>,
    },
    /// WORK_FAIL.
    Failed {
        /// The handle.
        handle: JobHandle,
        /// The text of the last WORK_WARNING the job sent, which workers use
        /// to tell why they fail where a server does not relay exceptions.
        warning: Option<Vec<u8>>,
    },
    /// WORK_EXCEPTION (with [`ClientBuilder::exceptions`](super::ClientBuilder::exceptions),
    /// the default).
    Exception {
        /// The handle.
        handle: JobHandle,
        /// The exception text.
        data: Vec<u8>,
    },
    /// A background job was accepted (JOB_CREATED).
    Accepted {
        /// The handle.
        handle: JobHandle,
    },
}

impl JobOutcome {
    /// True for `Complete` and `Accepted`.
    pub fn is_success(&self) -> bool {
        matches!(self, JobOutcome::Complete { .. } | JobOutcome::Accepted { .. })
    }

    /// The handle.
    pub fn handle(&self) -> &JobHandle {
        match self {
            JobOutcome::Complete { handle, .. }
            | JobOutcome::Failed { handle, .. }
            | JobOutcome::Exception { handle, .. }
            | JobOutcome::Accepted { handle } => handle,
        }
    }

    /// The result of a completed job, or the text of an exception.
    pub fn data(&self) -> Option<&[u8]> {
        match self {
            JobOutcome::Complete { data, .. } | JobOutcome::Exception { data, .. } => Some(data),
            _ => None,
        }
    }

    /// Why a job failed: the exception text, else the last warning, else
    /// [`NO_REASON`]. `None` for `Complete` and `Accepted`.
    pub fn reason(&self) -> Option<String> {
        let text = |d: &[u8]| {
            let d = perl_storable_string(d).unwrap_or(d);
            let t = String::from_utf8_lossy(d).trim_end_matches(['\0', '\n']).to_string();
            if t.trim().is_empty() { NO_REASON.to_string() } else { t }
        };
        match self {
            JobOutcome::Exception { data, .. } => Some(text(data)),
            JobOutcome::Failed { warning, .. } => {
                Some(warning.as_deref().map_or_else(|| NO_REASON.to_string(), text))
            }
            _ => None,
        }
    }

    /// `complete`, `failed`, `exception` or `accepted`.
    pub fn name(&self) -> &'static str {
        match self {
            JobOutcome::Complete { .. } => "complete",
            JobOutcome::Failed { .. } => "failed",
            JobOutcome::Exception { .. } => "exception",
            JobOutcome::Accepted { .. } => "accepted",
        }
    }
}

/// Something that happened to a job before its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobEvent {
    /// The server accepted the job (JOB_CREATED).
    Created(JobHandle),
    /// WORK_DATA: a part of the result.
    Data(Vec<u8>),
    /// WORK_WARNING.
    Warning(Vec<u8>),
    /// WORK_STATUS: progress as numerator and denominator.
    Status {
        /// Work done.
        numerator: u64,
        /// Work in all.
        denominator: u64,
    },
    /// The job's connection broke and it is being submitted again (same
    /// unique id); events may repeat.
    Resubmitted {
        /// Why.
        reason: String,
    },
}

/// The answer to a status query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobStatus {
    /// The server knows the job (queued or running).
    pub known: bool,
    /// A worker has it.
    pub running: bool,
    /// Last WORK_STATUS numerator.
    pub numerator: u64,
    /// Last WORK_STATUS denominator.
    pub denominator: u64,
    /// Foreground clients waiting (only from a status query by unique id).
    pub clients: Option<u64>,
}

/// Parses a decimal field leniently (as python-gearman's `int()`): garbage is 0.
pub(crate) fn parse_num(b: &[u8]) -> u64 {
    std::str::from_utf8(b).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// FNV-1a, 64 bit: a stable hash (the same in every process and version)
/// used to pick a server from a unique id.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    fnv1a(0xcbf2_9ce4_8422_2325, bytes)
}

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A unique id derived from a function and its payload (32 hex digits), so
/// that the same job submitted again coalesces with a copy still queued.
pub fn derive_unique(function: &str, payload: &[u8]) -> String {
    let mut key = Vec::with_capacity(function.len() + 1 + payload.len());
    key.extend_from_slice(function.as_bytes());
    key.push(0);
    key.extend_from_slice(payload);
    format!("{:016x}{:016x}", stable_hash(&key), fnv1a(0x6c62_272e_07bb_0142, &key))
}

/// A random unique id: 32 hex digits, as python-gearman generates.
pub(crate) fn random_unique() -> String {
    format!("{:016x}{:016x}", crate::util::random_u64(), crate::util::random_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_fnv1a() {
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn derived_uniques_depend_on_function_and_data() {
        let a = derive_unique("f", b"x");
        assert_eq!(a, derive_unique("f", b"x"));
        assert_ne!(a, derive_unique("g", b"x"));
        assert_ne!(a, derive_unique("f", b"y"));
        assert_eq!(a.len(), 32);
        assert!(a.len() <= MAX_UNIQUE_LEN);
        assert_ne!(random_unique(), random_unique());
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(Job::new("", "x").validate().unwrap_err().contains("empty"));
        assert!(Job::new("f\0", "x").validate().unwrap_err().contains("NUL"));
        let long = "u".repeat(64);
        assert!(Job::new("f", "x").unique(long).validate().unwrap_err().contains("63"));
        assert!(Job::new("f", "x").at_unix(5).is_background());
    }

    #[test]
    fn failure_reasons() {
        let handle = JobHandle::new("a:1", "H:a:1");
        let failed = |w: Option<&[u8]>| JobOutcome::Failed {
            handle: handle.clone(),
            warning: w.map(<[u8]>::to_vec),
        };
        assert_eq!(failed(None).reason().as_deref(), Some(NO_REASON));
        assert_eq!(failed(Some(b"exit code 3\n")).reason().as_deref(), Some("exit code 3"));
        let e = JobOutcome::Exception { handle: handle.clone(), data: b"boom".to_vec() };
        assert_eq!(e.reason().as_deref(), Some("boom"));
        let e = JobOutcome::Exception { handle: handle.clone(), data: Vec::new() };
        assert_eq!(e.reason().as_deref(), Some(NO_REASON));
        assert_eq!(JobOutcome::Accepted { handle: handle.clone() }.reason(), None);
        // Perl's Gearman::Worker: Storable::nfreeze(\"perl boom\n").
        let perl = JobOutcome::Exception { handle, data: b"\x05\x0b\x0a\x0aperl boom\n".to_vec() };
        assert_eq!(perl.reason().as_deref(), Some("perl boom"));
        assert_eq!(perl_storable_string(b"\x05\x0b\x01\0\0\0\x02ab"), Some(&b"ab"[..]));
        assert_eq!(perl_storable_string(b"\x05\x0b\x0a\x09short"), None);
        assert_eq!(perl_storable_string(b"plain text"), None);
    }

    #[test]
    fn lenient_numbers() {
        assert_eq!(parse_num(b"42"), 42);
        assert_eq!(parse_num(b" 7 "), 7);
        assert_eq!(parse_num(b"x"), 0);
    }
}
