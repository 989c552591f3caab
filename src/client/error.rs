//! The client's error type: every error names the phase that failed and,
//! where known, the server, the function and the job handle.

use std::fmt;
use std::time::Duration;

/// The step of a call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Opening a TCP connection.
    Connect,
    /// Writing requests.
    Send,
    /// Waiting for JOB_CREATED after a submission.
    Ack,
    /// Waiting for the result of a foreground job.
    Result,
    /// Waiting for the answer to a status, echo or option request.
    Reply,
}

impl Phase {
    /// Lowercase name: `connect`, `send`, `ack`, `result` or `reply`.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Send => "send",
            Phase::Ack => "ack",
            Phase::Result => "result",
            Phase::Reply => "reply",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an error is about: the server, the function and the job handle,
/// where they are known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The server (`host:port`).
    pub server: Option<String>,
    /// The job's function.
    pub function: Option<String>,
    /// The job handle, once the server has assigned one.
    pub handle: Option<String>,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.server {
            write!(f, ", server {s}")?;
        }
        if let Some(s) = &self.function {
            write!(f, ", function {s}")?;
        }
        if let Some(s) = &self.handle {
            write!(f, ", handle {s}")?;
        }
        Ok(())
    }
}

/// Why a client call failed.
///
/// A job that ran and failed is not an error: it is a
/// [`JobOutcome`](super::JobOutcome).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The server list is empty.
    NoServers,
    /// A server address cannot be used.
    BadServer {
        /// The address as given.
        server: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The job cannot be sent as given (empty function, NUL byte, unique
    /// id too long).
    InvalidJob {
        /// The job's function.
        function: String,
        /// What to fix.
        reason: String,
    },
    /// No server could be reached within the retry limit.
    Unreachable {
        /// Every server that was tried.
        servers: Vec<String>,
        /// The job's function, for job calls.
        function: Option<String>,
        /// The last failure seen.
        reason: String,
    },
    /// A wait passed its limit.
    Timeout {
        /// Which wait.
        phase: Phase,
        /// The limit that passed.
        limit: Duration,
        /// Server, function and handle.
        context: Box<Context>,
    },
    /// The server answered with an ERROR packet.
    Server {
        /// What the client was doing.
        phase: Phase,
        /// The error code, such as `QUEUE_ERROR`.
        code: String,
        /// The server's text.
        text: String,
        /// Server, function and handle.
        context: Box<Context>,
    },
    /// The connection broke, or the server sent something unexpected.
    Connection {
        /// What the client was doing.
        phase: Phase,
        /// What happened.
        reason: String,
        /// Server, function and handle.
        context: Box<Context>,
    },
}

impl Error {
    /// The phase that failed, when the error belongs to one.
    pub fn phase(&self) -> Option<Phase> {
        match self {
            Error::Timeout { phase, .. }
            | Error::Server { phase, .. }
            | Error::Connection { phase, .. } => Some(*phase),
            Error::Unreachable { .. } | Error::NoServers | Error::BadServer { .. } => {
                Some(Phase::Connect)
            }
            Error::InvalidJob { .. } => None,
        }
    }

    /// The context of the error (server, function, handle), if it has one.
    pub fn context(&self) -> Option<&Context> {
        match self {
            Error::Timeout { context, .. }
            | Error::Server { context, .. }
            | Error::Connection { context, .. } => Some(context),
            _ => None,
        }
    }

    pub(crate) fn with_handle(mut self, handle: Option<&str>) -> Error {
        if let (
            Error::Timeout { context, .. }
            | Error::Server { context, .. }
            | Error::Connection { context, .. },
            Some(h),
        ) = (&mut self, handle)
        {
            context.handle = Some(h.to_string());
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoServers => f.write_str("no job server configured"),
            Error::BadServer { server, reason } => {
                write!(f, "bad server address `{server}`: {reason}")
            }
            Error::InvalidJob { function, reason } => {
                write!(f, "invalid job for function `{function}`: {reason}")
            }
            Error::Unreachable { servers, function, reason } => {
                write!(f, "no job server reachable (tried {})", servers.join(", "))?;
                if let Some(func) = function {
                    write!(f, ", function {func}")?;
                }
                write!(f, ": {reason}")
            }
            Error::Timeout { phase, limit, context } => {
                let what = match phase {
                    Phase::Connect => "connecting",
                    Phase::Send => "writing requests",
                    Phase::Ack => "waiting for JOB_CREATED",
                    Phase::Result => "waiting for the result",
                    Phase::Reply => "waiting for a reply",
                };
                write!(f, "timed out after {limit:?} {what} in phase {phase}{context}")
            }
            Error::Server { phase, code, text, context } => {
                write!(f, "server error {code} `{text}` in phase {phase}{context}")
            }
            Error::Connection { phase: Phase::Connect, reason, context } => {
                let rest = Context { server: None, ..(**context).clone() };
                match &context.server {
                    Some(s) => write!(f, "cannot connect to {s}{rest}: {reason}"),
                    None => write!(f, "cannot connect{rest}: {reason}"),
                }
            }
            Error::Connection { phase, reason, context } => {
                write!(f, "connection failed in phase {phase}{context}: {reason}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// Result alias of the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_small_and_shareable() {
        fn bounds<T: Send + Sync + 'static>() {}
        bounds::<Error>();
        assert!(std::mem::size_of::<Error>() <= 96, "{}", std::mem::size_of::<Error>());
    }

    #[test]
    fn messages_name_everything() {
        let e = Error::Timeout {
            phase: Phase::Ack,
            limit: Duration::from_secs(2),
            context: Box::new(Context {
                server: Some("a:1".into()),
                function: Some("f".into()),
                handle: None,
            }),
        }
        .with_handle(Some("H:x:1"));
        assert_eq!(
            e.to_string(),
            "timed out after 2s waiting for JOB_CREATED in phase ack, server a:1, function f, \
             handle H:x:1"
        );
        let e = Error::Connection {
            phase: Phase::Connect,
            reason: "connection refused".into(),
            context: Box::new(Context {
                server: Some("a:1".into()),
                function: Some("f".into()),
                handle: None,
            }),
        };
        assert_eq!(e.to_string(), "cannot connect to a:1, function f: connection refused");
        let e = Error::Unreachable {
            servers: vec!["a:1".into(), "b:2".into()],
            reason: "refused".into(),
            function: Some("f".into()),
        };
        assert_eq!(e.to_string(), "no job server reachable (tried a:1, b:2), function f: refused");
        assert_eq!(e.phase(), Some(Phase::Connect));
    }
}
