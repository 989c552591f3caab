//! Functions that run commands: a [`ShellCommand`] per job, its outcome
//! mapped to the job's result.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;

use super::job::{FailKind, Handler, Job, JobContext, JobError, JobResult};
use super::shell::{Ending, ExitKind, OutputMode, Program, ShellCommand, ShellOutcome};

/// How much of stderr goes into a failure message.
const STDERR_TAIL: usize = 2048;

/// A function that runs a command per job.
///
/// - exit 0: WORK_COMPLETE with stdout (empty data when stdout was
///   streamed as WORK_DATA or went to the terminal);
/// - non-zero exit: a failure `exit code N: <stderr tail>`;
/// - timeout: a failure `timed out after N s`;
/// - a command that cannot start: a failure with the reason.
///
/// Failures are sent as [`ShellFunction::failure`] says, by default
/// [`FailKind::Auto`]: WORK_WARNING with the message, then WORK_EXCEPTION on
/// gearframe's server or WORK_FAIL on the others, so that every client
/// ends and can show the message.
///
/// The job's function, handle, unique and attempt number are in the
/// environment as `GEARMAN_FUNCTION`, `GEARMAN_HANDLE`, `GEARMAN_UNIQUE`
/// and `GEARMAN_ATTEMPT`.
#[derive(Debug, Clone)]
pub struct ShellFunction {
    template: ShellCommand,
    payload_commands: Option<Arc<PayloadCommands>>,
    failure: FailKind,
}

/// The original gearman_frame's payload format, `{"command": "prog",
/// "argvs": "arg"}` (or `"argvs": ["a", "b"]`), for commands on an
/// explicit allow-list. The command must equal one of the list's entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadCommands {
    allowed: Vec<String>,
}

impl PayloadCommands {
    /// Allows exactly these commands.
    pub fn new(allowed: Vec<String>) -> PayloadCommands {
        PayloadCommands { allowed }
    }

    /// The argv a payload asks for.
    ///
    /// # Errors
    /// Not the expected JSON, or a command not on the list.
    pub fn argv(&self, payload: &[u8]) -> Result<Vec<String>, String> {
        let v: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
            format!("payload is not JSON {{\"command\": ..., \"argvs\": ...}}: {e}")
        })?;
        let command =
            v.get("command").and_then(|c| c.as_str()).ok_or("payload has no \"command\" string")?;
        if !self.allowed.iter().any(|a| a == command) {
            return Err(format!("command {command:?} is not in this function's allowed_commands"));
        }
        let mut argv = vec![command.to_string()];
        match v.get("argvs") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) => argv.push(s.clone()),
            Some(serde_json::Value::Array(a)) => {
                for x in a {
                    match x {
                        serde_json::Value::String(s) => argv.push(s.clone()),
                        other => argv.push(other.to_string()),
                    }
                }
            }
            Some(other) => argv.push(other.to_string()),
        }
        Ok(argv)
    }
}

impl ShellFunction {
    /// Runs `command` for every job.
    pub fn new(command: ShellCommand) -> ShellFunction {
        ShellFunction { template: command, payload_commands: None, failure: FailKind::Auto }
    }

    /// Takes the command from each job's payload, from an allow-list;
    /// `settings` gives the timeout, cwd, environment and output mode (its
    /// program is not used, and stdin is empty).
    pub fn from_payload(settings: ShellCommand, allowed: PayloadCommands) -> ShellFunction {
        ShellFunction {
            template: settings.stdin(false),
            payload_commands: Some(Arc::new(allowed)),
            failure: FailKind::Auto,
        }
    }

    /// How failures are reported (default [`FailKind::Auto`]).
    pub fn failure(mut self, kind: FailKind) -> ShellFunction {
        self.failure = kind;
        self
    }

    /// Maps an outcome to the job's result.
    pub fn result(out: ShellOutcome) -> JobResult {
        match out.ending {
            Ending::TimedOut(t) => {
                Err(JobError::new(format!("timed out after {} s", t.as_secs_f64())))
            }
            Ending::Cancelled => Err(JobError::new("cancelled: the worker is shutting down")),
            Ending::Exited(ExitKind::Code(0)) => Ok(()),
            Ending::Exited(kind) => {
                let tail_start = out.stderr.len().saturating_sub(STDERR_TAIL);
                let tail = String::from_utf8_lossy(&out.stderr[tail_start..]);
                let tail = tail.trim_end();
                let mut msg = format!("exit code {}", kind.code());
                if !tail.is_empty() {
                    msg.push_str(": ");
                    msg.push_str(tail);
                }
                Err(JobError::new(msg))
            }
        }?;
        if out.stdout_truncated {
            return Err(JobError::new(format!(
                "output larger than {} bytes (max_output)",
                out.stdout.len()
            )));
        }
        Ok(out.stdout)
    }
}

impl Handler for ShellFunction {
    fn call(&self, job: &Job, ctx: &mut JobContext<'_>) -> JobResult {
        self.run(job, ctx).map_err(|e| e.with_kind(self.failure))
    }
}

impl ShellFunction {
    fn run(&self, job: &Job, ctx: &mut JobContext<'_>) -> JobResult {
        let cmd = match &self.payload_commands {
            None => self.template.clone(),
            Some(allowed) => {
                let argv = allowed.argv(job.payload()).map_err(JobError::new)?;
                self.template
                    .with_program(Program::Argv(argv.into_iter().map(OsString::from).collect()))
            }
        };
        let env = [
            ("GEARMAN_FUNCTION".into(), OsString::from(job.function())),
            ("GEARMAN_HANDLE".into(), OsString::from(job.handle())),
            ("GEARMAN_UNIQUE".into(), OsString::from_vec(job.unique().to_vec())),
            ("GEARMAN_ATTEMPT".into(), OsString::from(job.attempt().to_string())),
        ];
        let cancel = ctx.cancel_token();
        let streaming = cmd.get_output() == OutputMode::Stream;
        let mut send_error = None;
        let out = cmd.run_with(job.payload(), &env, &|| cancel.is_cancelled(), &mut |line| {
            if streaming
                && send_error.is_none()
                && let Err(e) = ctx.data(line)
            {
                send_error = Some(e);
            }
        });
        let out = out.map_err(|e| JobError::new(e.to_string()))?;
        Self::result(out)
    }
}
