//! Running a job's command: the shell runner.
//!
//! A [`ShellCommand`] describes what to run (an argv list or a `sh -c`
//! string), where (`cwd`), with which environment, for how long, and what
//! to do with the output. [`ShellCommand::run`] starts it and returns a
//! [`ShellOutcome`] once every process it started is gone: it spawns the
//! command as a [`ProcessGroup`], supervises it (output, timeout, cancel),
//! then reaps what it left. [`ProcessGroup`] alone is the crate's one way
//! to run any command with a deadline and then stop its whole group.
//!
//! Guarantees:
//!
//! - The child is the leader of a new process group. When it times out, or
//!   the caller cancels the run, the whole group gets SIGTERM, then SIGKILL
//!   after [`ShellCommand::kill_grace`]. Processes that the command left
//!   behind in its group when it exited are stopped the same way.
//! - Processes that left the group (`setsid`, `setpgid(0, 0)`, a double
//!   fork) are stopped too once the main process has ended: every run puts
//!   a token `GEARFRAME_JOB=<pid>.<n>` in its environment, which its
//!   descendants inherit, and the processes carrying it (and their
//!   descendants) are found in `/proc`, sent SIGTERM, then SIGKILL after
//!   the kill grace. With
//!   [`ShellCommand::keep_processes`] they are left running instead
//!   (daemons started on purpose).
//! - The first run makes this process a child subreaper
//!   (`PR_SET_CHILD_SUBREAPER`, process-wide and for the rest of its life):
//!   orphaned descendants of runs are re-parented to it instead of to init,
//!   and the runner reaps them, each by its pid, once they have exited (at
//!   the end of each run, and every few seconds in a
//!   [`Worker`](super::Worker)). It reaps only processes it saw carrying
//!   one of its tokens, never `waitpid(-1)`, so other children of the
//!   program are left to their owners; a program that starts daemons of
//!   its own should know that their orphans now come to it.
//! - Limits: a process that clears its environment (or changes the token)
//!   *and* leaves the group is not found once no process carrying the
//!   token is its ancestor any more, and one that exits before it was
//!   ever seen is not reaped when its parent dies later. A cgroup per run
//!   would be the complete answer.
//! - The leader is reaped before `run` returns: no zombie is left. It is
//!   reaped only after the group was cleaned up, so its process group id
//!   cannot be reused by an unrelated process while signals are sent to it.
//! - stdout and stderr are read by one poll loop, so a full pipe never
//!   blocks the child; stdout is kept up to a byte cap (the head), stderr
//!   up to its own cap (the tail, where errors usually are).
//! - The payload reaches stdin through an unlinked temporary file: a child
//!   that never reads stdin cannot block the runner.
//!
//! The runner reads `/proc` to see whether the leader has exited without
//! reaping it, and to find the processes left in its group or carrying its
//! token (Linux).
//!
//! ```no_run
//! use std::time::Duration;
//! use gearframe::worker::shell::ShellCommand;
//!
//! let out = ShellCommand::shell("wc -l")
//!     .timeout(Some(Duration::from_secs(5)))
//!     .run(b"one\ntwo\n")?;
//! assert!(out.success());
//! assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
//! # Ok::<(), gearframe::worker::shell::ShellError>(())
//! ```

use std::ffi::OsString;
use std::fs::File;
use std::io::{Seek, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use subprocess::unix::PopenExt;
use subprocess::{ExitStatus, Popen, PopenConfig, Redirection};

use super::reaper;

const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

/// How long one read of the output pipes may wait; also bounds how late a
/// timeout or a cancel is noticed.
const TICK: Duration = Duration::from_millis(20);
/// After SIGKILL, how long to wait for the group to go away before giving
/// up on it (a process stuck in the kernel).
const KILL_WAIT: Duration = Duration::from_secs(5);
/// After the group is gone, how long to keep reading pipes that are still
/// open (held by a process that left the group).
const FINAL_DRAIN: Duration = Duration::from_millis(500);

/// Default cap on captured stdout (16 MiB).
pub const DEFAULT_MAX_STDOUT: usize = 16 << 20;
/// Default cap on the kept stderr tail (64 KiB).
pub const DEFAULT_MAX_STDERR: usize = 64 << 10;
/// Default time between SIGTERM and SIGKILL.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// A program and its arguments, run without a shell.
    Argv(Vec<OsString>),
    /// A string run by `/bin/sh -c`.
    Shell(String),
}

/// Where the child's output goes (`output:` in a function of config.yaml:
/// `capture`, `stream` or `tty`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum OutputMode {
    /// stdout and stderr are captured separately (with caps).
    #[default]
    Capture,
    /// stdout is handed over line by line as it comes; stderr is captured.
    Stream,
    /// stdout and stderr are inherited: they go to the worker's terminal.
    Tty,
}

/// A command to run, with its limits. Cheap to clone and reusable.
///
/// In a function of config.yaml (`worker.functions.NAME`) its keys are
/// `command` (a list: program and arguments) or `shell` (a string for
/// `/bin/sh -c`), `cwd`, `env` (a mapping), `timeout` (`0`: none),
/// `kill_grace`, `keep_processes`, `stdin` (`payload` or `none`), `output`
/// and `max_output` (the stdout cap).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShellCommand {
    #[serde(flatten, serialize_with = "super::config::keys::program")]
    program: Program,
    pub(super) cwd: Option<PathBuf>,
    #[serde(serialize_with = "super::config::keys::env")]
    env: Vec<(OsString, OsString)>,
    #[serde(serialize_with = "super::config::keys::limit::serialize")]
    timeout: Option<Duration>,
    #[serde(serialize_with = "crate::config::duration::serialize")]
    kill_grace: Duration,
    output: OutputMode,
    #[serde(rename = "max_output")]
    pub(super) max_stdout: usize,
    #[serde(skip)]
    max_stderr: usize,
    #[serde(serialize_with = "super::config::keys::stdin")]
    stdin: bool,
    pub(super) keep_processes: bool,
}

impl Default for ShellCommand {
    /// No program yet (a run fails to start), with the defaults of
    /// [`ShellCommand::new`].
    fn default() -> Self {
        ShellCommand::new(Program::Argv(Vec::new()))
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

impl ExitKind {
    /// The exit code, with a signal `n` reported as `128 + n` (the shell's
    /// convention).
    pub fn code(self) -> i32 {
        match self {
            ExitKind::Code(c) => c,
            ExitKind::Signal(s) => 128 + s,
        }
    }

    fn from_status(status: ExitStatus) -> ExitKind {
        match status {
            ExitStatus::Exited(c) => ExitKind::Code(c as i32),
            ExitStatus::Signaled(s) => ExitKind::Signal(i32::from(s)),
            ExitStatus::Other(c) => ExitKind::Code(c),
            ExitStatus::Undetermined => ExitKind::Code(-1),
        }
    }
}

impl std::fmt::Display for ExitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitKind::Code(c) => write!(f, "exit code {c}"),
            ExitKind::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The command's main process ended by itself, in this way.
    Exited(ExitKind),
    /// The run hit its timeout, this long, and its process group was stopped.
    TimedOut(Duration),
    /// The caller cancelled the run and its process group was stopped.
    Cancelled,
}

/// The result of a run that started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellOutcome {
    /// The process id of the command's main process, which was also its
    /// process group id.
    pub pid: u32,
    /// How the run ended.
    pub ending: Ending,
    /// Captured stdout (empty for [`OutputMode::Stream`] and [`OutputMode::Tty`]).
    pub stdout: Vec<u8>,
    /// stdout went over its cap; `stdout` holds the first bytes.
    pub stdout_truncated: bool,
    /// Captured stderr: its last bytes when it went over its cap.
    pub stderr: Vec<u8>,
    /// stderr went over its cap; `stderr` holds the last bytes.
    pub stderr_truncated: bool,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

impl ShellOutcome {
    /// The exit code of a command that ended by itself (see
    /// [`ExitKind::code`]); `None` after a timeout or a cancel.
    pub fn exit_code(&self) -> Option<i32> {
        match self.ending {
            Ending::Exited(kind) => Some(kind.code()),
            Ending::TimedOut(_) | Ending::Cancelled => None,
        }
    }

    /// Exit code 0, no timeout, no cancel.
    pub fn success(&self) -> bool {
        self.ending == Ending::Exited(ExitKind::Code(0))
    }
}

/// The command could not be started: what was being done, and why it
/// failed ([`ShellError::kind`]).
#[derive(Debug)]
pub struct ShellError {
    message: String,
    kind: ShellErrorKind,
}

/// Why a command could not be started.
#[derive(Debug)]
#[non_exhaustive]
pub enum ShellErrorKind {
    /// The command is an empty argument list.
    NoProgram,
    /// The working directory does not exist or is not a directory.
    NoDirectory,
    /// A system call failed: writing the payload to a temporary file,
    /// opening `/dev/null`, or starting the process.
    Io(std::io::Error),
}

impl ShellError {
    fn new(message: String, source: std::io::Error) -> ShellError {
        ShellError { message, kind: ShellErrorKind::Io(source) }
    }

    /// Why the command could not be started.
    pub fn kind(&self) -> &ShellErrorKind {
        &self.kind
    }
}

impl std::fmt::Display for ShellErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShellErrorKind::NoProgram => f.write_str("no program given"),
            ShellErrorKind::NoDirectory => f.write_str("no such directory"),
            ShellErrorKind::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::fmt::Display for ShellError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.message, self.kind)
    }
}

impl std::error::Error for ShellError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ShellErrorKind::Io(e) => Some(e),
            ShellErrorKind::NoProgram | ShellErrorKind::NoDirectory => None,
        }
    }
}

impl ShellCommand {
    /// A program and its arguments (no shell).
    pub fn argv<I, S>(args: I) -> ShellCommand
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        ShellCommand::new(Program::Argv(args.into_iter().map(Into::into).collect()))
    }

    /// A shell string for `/bin/sh -c`.
    pub fn shell(script: impl Into<String>) -> ShellCommand {
        ShellCommand::new(Program::Shell(script.into()))
    }

    /// A command for `program` with the defaults: no timeout, captured
    /// output with the default caps, payload on stdin.
    pub fn new(program: Program) -> ShellCommand {
        ShellCommand {
            program,
            cwd: None,
            env: Vec::new(),
            timeout: None,
            kill_grace: DEFAULT_KILL_GRACE,
            output: OutputMode::Capture,
            max_stdout: DEFAULT_MAX_STDOUT,
            max_stderr: DEFAULT_MAX_STDERR,
            stdin: true,
            keep_processes: false,
        }
    }

    /// The same settings with another program.
    pub fn with_program(&self, program: Program) -> ShellCommand {
        ShellCommand { program, ..self.clone() }
    }

    /// What runs.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The working directory (default: the worker's).
    pub fn cwd(mut self, dir: Option<PathBuf>) -> Self {
        self.cwd = dir;
        self
    }

    /// Adds an environment variable (on top of the worker's environment).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Wall-clock limit of a run (`None`: unlimited).
    pub fn timeout(mut self, t: Option<Duration>) -> Self {
        self.timeout = t;
        self
    }

    /// The configured timeout.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Time between SIGTERM and SIGKILL.
    pub fn kill_grace(mut self, d: Duration) -> Self {
        self.kill_grace = d;
        self
    }

    /// Where output goes.
    pub fn output(mut self, mode: OutputMode) -> Self {
        self.output = mode;
        self
    }

    /// The output mode.
    pub fn get_output(&self) -> OutputMode {
        self.output
    }

    /// Cap on captured stdout bytes.
    pub fn max_stdout(mut self, n: usize) -> Self {
        self.max_stdout = n;
        self
    }

    /// Cap on kept stderr bytes.
    pub fn max_stderr(mut self, n: usize) -> Self {
        self.max_stderr = n;
        self
    }

    /// Whether the input is given on stdin (`false`: stdin is `/dev/null`).
    pub fn stdin(mut self, payload: bool) -> Self {
        self.stdin = payload;
        self
    }

    /// Whether processes the command leaves running when it ends keep
    /// running (default `false`: they are stopped, wherever they went).
    /// For commands that start daemons on purpose. On a timeout or a
    /// cancel the command's process group is still stopped.
    pub fn keep_processes(mut self, keep: bool) -> Self {
        self.keep_processes = keep;
        self
    }

    /// A short name for messages: the program, or the shell string.
    pub fn display_name(&self) -> String {
        match &self.program {
            Program::Argv(a) => {
                a.first().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
            }
            Program::Shell(s) => format!("sh -c {s:?}"),
        }
    }

    /// Runs the command with `input` on stdin and waits for it.
    ///
    /// # Errors
    /// The command could not be started: missing program, bad working
    /// directory, no permission.
    pub fn run(&self, input: &[u8]) -> Result<ShellOutcome, ShellError> {
        self.run_with(input, &[], &|| false, &mut |_| {})
    }

    /// Runs the command with extra environment variables, a cancel check
    /// (polled every few milliseconds; `true` kills the run), and a callback
    /// that gets each stdout line (with its `\n`) in [`OutputMode::Stream`].
    ///
    /// # Errors
    /// As [`ShellCommand::run`].
    pub fn run_with(
        &self,
        input: &[u8],
        extra_env: &[(OsString, OsString)],
        cancel: &dyn Fn() -> bool,
        on_line: &mut dyn FnMut(&[u8]),
    ) -> Result<ShellOutcome, ShellError> {
        let start = Instant::now();
        let token = reaper::new_token();
        let mut group = self.spawn(input, extra_env, &token)?;
        let pid = group.pid();
        log::debug!("shell start pid={pid} cmd={:?}", self.display_name());
        let mut output = Output::new(self, &mut group);
        let stopped = group.wait(self.timeout, cancel, &mut || output.read_once(on_line));
        let exit = self.reap(group, &token);
        output.drain(on_line);
        let ending = stopped.unwrap_or(Ending::Exited(exit));
        let elapsed = start.elapsed();
        log::debug!("shell end pid={pid} exit={exit:?} ending={ending:?} elapsed={elapsed:?}");
        Ok(output.into_outcome(ending, elapsed))
    }

    /// Starts the command as the leader of a new process group, with the
    /// run's token in its environment.
    fn spawn(
        &self,
        input: &[u8],
        extra_env: &[(OsString, OsString)],
        token: &str,
    ) -> Result<ProcessGroup, ShellError> {
        let argv: Vec<OsString> = match &self.program {
            Program::Argv(a) => a.clone(),
            Program::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.into()],
        };
        if argv.is_empty() {
            return Err(ShellError {
                message: "cannot start an empty command".into(),
                kind: ShellErrorKind::NoProgram,
            });
        }
        if let Some(dir) = &self.cwd
            && !dir.is_dir()
        {
            return Err(ShellError {
                message: format!("cannot start `{}` in {}", self.display_name(), dir.display()),
                kind: ShellErrorKind::NoDirectory,
            });
        }
        let stdin_file = if self.stdin && !input.is_empty() {
            stdin_file(input).map_err(|e| {
                ShellError::new("cannot write the payload to a temporary file".into(), e)
            })?
        } else {
            File::open("/dev/null")
                .map_err(|e| ShellError::new("cannot open /dev/null".into(), e))?
        };
        reaper::become_subreaper();
        let token_var = [(OsString::from(reaper::TOKEN_VAR), OsString::from(token))];
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        for (k, v) in self.env.iter().chain(extra_env).chain(&token_var) {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let (out, err) = match self.output {
            OutputMode::Tty => (Redirection::None, Redirection::None),
            OutputMode::Capture | OutputMode::Stream => (Redirection::Pipe, Redirection::Pipe),
        };
        let config = PopenConfig {
            stdin: Redirection::File(stdin_file),
            stdout: out,
            stderr: err,
            cwd: self.cwd.as_ref().map(|d| d.as_os_str().to_owned()),
            env: Some(env),
            ..Default::default()
        };
        let group = ProcessGroup::start(&argv, config).map_err(|e| {
            let io = match e {
                subprocess::PopenError::IoError(io) => io,
                other => std::io::Error::other(other.to_string()),
            };
            let place = match &self.cwd {
                Some(d) => format!(" in {}", d.display()),
                None => String::new(),
            };
            ShellError::new(format!("cannot start `{}`{place}", self.display_name()), io)
        })?;
        Ok(group.kill_grace(self.kill_grace).keep_group(self.keep_processes))
    }

    /// Stops (or, with [`ShellCommand::keep_processes`], tracks) the
    /// processes that left the group, then reaps the leader.
    fn reap(&self, group: ProcessGroup, token: &str) -> ExitKind {
        let pid = group.pid();
        // Processes that left the group (a new session or group, a double
        // fork): found by the run's token. The leader is still unreaped, so
        // its pid cannot name another process meanwhile.
        if self.keep_processes {
            reaper::keep_all(token, pid);
        } else {
            let stopped = reaper::end_all(token, pid, self.kill_grace, KILL_WAIT);
            if stopped > 0 {
                log::info!(
                    "shell pid={pid}: stopped {stopped} process(es) it left outside its group"
                );
            }
        }
        let exit = group.finish();
        if reaper::tracking() {
            // Processes of earlier runs that were left running may have
            // exited since (a worker pool also sweeps every few seconds).
            reaper::reap_orphans();
        }
        exit
    }
}

/// A process started as the leader of a new process group, and stopped as a
/// group: the one way this crate runs a command with a deadline.
///
/// [`ProcessGroup::wait`] waits for the leader until a timeout or a cancel,
/// then sends the whole group SIGTERM, and SIGKILL after the kill grace;
/// processes the leader leaves in its group when it exits are stopped the
/// same way (unless [`ProcessGroup::keep_group`]). The leader is reaped only
/// by [`ProcessGroup::finish`] (or on drop, after a SIGKILL to the group), so
/// its process group id cannot name another group while signals are sent.
///
/// ```no_run
/// use std::time::Duration;
/// use gearframe::worker::shell::{Ending, ProcessGroup};
/// use subprocess::PopenConfig;
///
/// let group = ProcessGroup::start(&["sleep".into(), "9".into()], PopenConfig::default())?;
/// let ending = group.run(Some(Duration::from_millis(100)));
/// assert_eq!(ending, Ending::TimedOut(Duration::from_millis(100)));
/// # Ok::<(), subprocess::PopenError>(())
/// ```
#[derive(Debug)]
pub struct ProcessGroup {
    child: Popen,
    pid: u32,
    kill_grace: Duration,
    keep_group: bool,
    reaped: bool,
}

impl ProcessGroup {
    /// Starts `argv` with `config` (whose `setpgid` is set here) as the
    /// leader of a new process group.
    ///
    /// # Errors
    /// The command could not be started.
    pub fn start(argv: &[OsString], config: PopenConfig) -> subprocess::Result<ProcessGroup> {
        let config = PopenConfig { setpgid: true, ..config };
        // One start at a time in this process: the subprocess crate opens
        // the child's pipes, and the pipe on which the child reports a
        // failed exec, without close-on-exec and marks them afterwards, so a
        // command forked by another thread meanwhile would inherit them and
        // hold this one's output (or its exec report, and with it this
        // start) open for as long as it runs. The child is registered under
        // the same lock, so the orphan reaper never takes it for one of its
        // own.
        let mut spawning = reaper::RUNNER_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
        let child = Popen::create(argv, config)?;
        let pid = child.pid().unwrap_or(0);
        spawning.insert(pid);
        drop(spawning);
        Ok(ProcessGroup {
            child,
            pid,
            kill_grace: DEFAULT_KILL_GRACE,
            keep_group: false,
            reaped: false,
        })
    }

    /// Time between SIGTERM and SIGKILL (default [`DEFAULT_KILL_GRACE`]).
    pub fn kill_grace(mut self, d: Duration) -> Self {
        self.kill_grace = d;
        self
    }

    /// Whether processes left in the group once the leader has exited keep
    /// running (default `false`: they are stopped). On a timeout or a cancel
    /// the group is stopped all the same.
    pub fn keep_group(mut self, keep: bool) -> Self {
        self.keep_group = keep;
        self
    }

    /// The leader's process id, which is also the group's id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The leader, for its pipes (`stdin`, `stdout`, `stderr`).
    pub fn popen(&mut self) -> &mut Popen {
        &mut self.child
    }

    /// Waits until the leader has exited and its group is empty, for at
    /// most `timeout` from now (`None`: no limit), asking `cancel` and
    /// calling `pump` every few milliseconds (`pump` reads output and says
    /// whether a pipe is still open; while none is, the wait naps instead).
    /// On the timeout or a cancel the group is stopped, which is returned;
    /// `None` when the leader ended by itself. The leader is not reaped.
    pub fn wait(
        &mut self,
        timeout: Option<Duration>,
        cancel: &dyn Fn() -> bool,
        pump: &mut dyn FnMut() -> bool,
    ) -> Option<Ending> {
        let pid = self.pid;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut phase = Phase::Running;
        let mut stopped = None;
        let mut nap = Duration::from_millis(1);
        let mut leader_gone = false;
        loop {
            // Output, or a short nap when there is none to wait on.
            if !pump() {
                std::thread::sleep(nap);
                nap = (nap * 2).min(TICK);
            }
            if !leader_gone {
                leader_gone = leader_exited(&mut self.child, pid);
            }
            let now = Instant::now();
            match phase {
                Phase::Running => {
                    let why = if leader_gone {
                        if self.keep_group || !group_alive(pid) {
                            break;
                        }
                        log::debug!("shell pid={pid} exited leaving processes in its group");
                        None
                    } else if let Some(t) = timeout
                        && deadline.is_some_and(|d| now >= d)
                    {
                        // The job's failure is logged as a warning by the
                        // worker, naming its function and handle.
                        log::info!(
                            "shell pid={pid} timed out after {t:?}: stopping its process group"
                        );
                        Some(Ending::TimedOut(t))
                    } else if cancel() {
                        log::info!("shell pid={pid} cancelled: stopping its process group");
                        Some(Ending::Cancelled)
                    } else {
                        continue;
                    };
                    stopped = why;
                    self.signal(SIGTERM);
                    phase = Phase::Terminating(now);
                }
                Phase::Terminating(since) => {
                    if leader_gone && !group_alive(pid) {
                        break;
                    }
                    if now.duration_since(since) >= self.kill_grace {
                        log::warn!("shell pid={pid} still running after SIGTERM: SIGKILL");
                        self.signal(SIGKILL);
                        phase = Phase::Killed(now);
                    }
                }
                Phase::Killed(since) => {
                    if leader_gone && !group_alive(pid) {
                        break;
                    }
                    if now.duration_since(since) >= KILL_WAIT {
                        log::error!("shell pid={pid}: process group survives SIGKILL");
                        break;
                    }
                }
            }
        }
        stopped
    }

    /// Reaps the leader (it has exited, or was sent SIGKILL) and returns
    /// how it ended.
    pub fn finish(mut self) -> ExitKind {
        self.reap_leader()
    }

    /// [`ProcessGroup::wait`] with no cancel and no output to read, then
    /// [`ProcessGroup::finish`].
    pub fn run(mut self, timeout: Option<Duration>) -> Ending {
        let stopped = self.wait(timeout, &|| false, &mut || false);
        let exit = self.finish();
        stopped.unwrap_or(Ending::Exited(exit))
    }

    fn reap_leader(&mut self) -> ExitKind {
        let status = match self.child.wait_timeout(KILL_WAIT) {
            Ok(Some(s)) => s,
            Ok(None) | Err(_) => {
                let _ = self.child.kill();
                self.child.wait().unwrap_or(ExitStatus::Undetermined)
            }
        };
        self.reaped = true;
        reaper::RUNNER_CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.pid);
        ExitKind::from_status(status)
    }

    /// Sends `sig` to the group. The leader is not reaped yet, so the group
    /// id still names this group.
    fn signal(&self, sig: i32) {
        if let Err(e) = self.child.send_signal_group(sig) {
            // ESRCH: the group is already empty.
            log::debug!("signal {sig} to group {}: {e}", self.pid);
        }
    }
}

impl Drop for ProcessGroup {
    /// A group dropped before [`ProcessGroup::finish`] is killed and its
    /// leader reaped.
    fn drop(&mut self) {
        if !self.reaped {
            self.signal(SIGKILL);
            let _ = self.reap_leader();
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Running,
    Terminating(Instant),
    Killed(Instant),
}

/// The output side of one run: its pipes and what was kept of them.
struct Output {
    pid: u32,
    comm: Option<subprocess::Communicator>,
    stdout: Vec<u8>,
    stdout_truncated: bool,
    stderr: Vec<u8>,
    stderr_truncated: bool,
    line: Vec<u8>,
    mode: OutputMode,
    max_stdout: usize,
    max_stderr: usize,
}

impl Output {
    fn new(cmd: &ShellCommand, group: &mut ProcessGroup) -> Output {
        let comm = match cmd.output {
            OutputMode::Tty => None,
            OutputMode::Capture | OutputMode::Stream => {
                Some(group.popen().communicate_start(None).limit_time(TICK).limit_size(64 << 10))
            }
        };
        Output {
            pid: group.pid(),
            comm,
            stdout: Vec::new(),
            stdout_truncated: false,
            stderr: Vec::new(),
            stderr_truncated: false,
            line: Vec::new(),
            mode: cmd.output,
            max_stdout: cmd.max_stdout,
            max_stderr: cmd.max_stderr,
        }
    }

    /// Reads once (at most [`TICK`]); false once both pipes are at end of
    /// file or broken (then they are closed), or there are none.
    fn read_once(&mut self, on_line: &mut dyn FnMut(&[u8])) -> bool {
        let Some(c) = self.comm.as_mut() else { return false };
        let open = match c.read() {
            Ok((o, e)) => {
                let (o, e) = (o.unwrap_or_default(), e.unwrap_or_default());
                let eof = o.is_empty() && e.is_empty();
                self.take(&o, &e, on_line);
                !eof
            }
            Err(ce) => {
                let (o, e) = ce.capture;
                self.take(&o.unwrap_or_default(), &e.unwrap_or_default(), on_line);
                if ce.error.kind() == std::io::ErrorKind::TimedOut {
                    true
                } else {
                    log::warn!("shell pid={}: reading output failed: {}", self.pid, ce.error);
                    false
                }
            }
        };
        if !open {
            self.comm = None;
        }
        open
    }

    /// Pipes still held by a process that left the group: reads what is
    /// there for a short while, then lets them go.
    fn drain(&mut self, on_line: &mut dyn FnMut(&[u8])) {
        let until = Instant::now() + FINAL_DRAIN;
        while Instant::now() < until && self.read_once(on_line) {}
        self.comm = None;
        if !self.line.is_empty() {
            on_line(&self.line);
            self.line.clear();
        }
    }

    fn into_outcome(self, ending: Ending, elapsed: Duration) -> ShellOutcome {
        ShellOutcome {
            pid: self.pid,
            ending,
            stdout: self.stdout,
            stdout_truncated: self.stdout_truncated,
            stderr: self.stderr,
            stderr_truncated: self.stderr_truncated,
            elapsed,
        }
    }

    fn take(&mut self, out: &[u8], err: &[u8], on_line: &mut dyn FnMut(&[u8])) {
        if !out.is_empty() {
            match self.mode {
                OutputMode::Stream => {
                    self.line.extend_from_slice(out);
                    while let Some(i) = self.line.iter().position(|&b| b == b'\n') {
                        let rest = self.line.split_off(i + 1);
                        on_line(&self.line);
                        self.line = rest;
                    }
                    if self.line.len() >= self.max_stdout.max(1) {
                        on_line(&self.line);
                        self.line.clear();
                    }
                }
                _ => {
                    let room = self.max_stdout.saturating_sub(self.stdout.len());
                    if out.len() > room {
                        self.stdout_truncated = true;
                    }
                    self.stdout.extend_from_slice(&out[..out.len().min(room)]);
                }
            }
        }
        if !err.is_empty() {
            self.stderr.extend_from_slice(err);
            if self.stderr.len() > self.max_stderr {
                let cut = self.stderr.len() - self.max_stderr;
                self.stderr.drain(..cut);
                self.stderr_truncated = true;
            }
        }
    }
}

/// Whether the leader has exited, without reaping it (its `/proc` state is
/// zombie). Without `/proc` it is reaped here.
fn leader_exited(child: &mut Popen, pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => matches!(parse_stat(&stat), Some((b'Z' | b'X', _, _))),
        Err(_) => child.poll().is_some(),
    }
}

/// `(state, ppid, pgrp)` from a `/proc/PID/stat` line.
pub(crate) fn parse_stat(stat: &str) -> Option<(u8, u32, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut it = rest.split_ascii_whitespace();
    let state = *it.next()?.as_bytes().first()?;
    let ppid = it.next()?.parse().ok()?;
    let pgrp = it.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Whether a live process other than the leader is in process group `pgid`.
fn group_alive(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == pgid {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        if let Some((state, _, pgrp)) = parse_stat(&stat)
            && pgrp == pgid
            && state != b'Z'
            && state != b'X'
        {
            return true;
        }
    }
    false
}

/// The payload in an unlinked temporary file, positioned at its start.
fn stdin_file(input: &[u8]) -> std::io::Result<File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir();
    for _ in 0..100 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "gearframe-stdin-{}-{n}-{:x}",
            std::process::id(),
            crate::util::random_u64() & 0xffff_ffff
        ));
        let mut f =
            match std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
        let _ = std::fs::remove_file(&path);
        f.write_all(input)?;
        f.rewind()?;
        return Ok(f);
    }
    Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free temporary file name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        assert_eq!(parse_stat("12 (a) b) c) S 1 12 12 0"), Some((b'S', 1, 12)));
        assert_eq!(parse_stat("7 (sleep) Z 3 5 5"), Some((b'Z', 3, 5)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_command_that_cannot_start_says_why() {
        let e = ShellCommand::argv(Vec::<OsString>::new()).run(b"").unwrap_err();
        assert!(matches!(e.kind(), ShellErrorKind::NoProgram), "{e:?}");
        assert_eq!(e.to_string(), "cannot start an empty command: no program given");
        let e = ShellCommand::argv(["true"])
            .cwd(Some("/nonexistent/gearframe-test-dir".into()))
            .run(b"")
            .unwrap_err();
        assert!(matches!(e.kind(), ShellErrorKind::NoDirectory), "{e:?}");
        assert!(e.to_string().ends_with(": no such directory"), "{e}");
        assert!(std::error::Error::source(&e).is_none());
    }

    #[test]
    fn echo_and_exit_code() {
        let out = ShellCommand::argv(["cat"]).run(b"hi").unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, b"hi");
        let out = ShellCommand::shell("echo oops >&2; exit 3").run(b"").unwrap();
        assert_eq!(out.ending, Ending::Exited(ExitKind::Code(3)));
        assert_eq!(out.stderr, b"oops\n");
    }

    #[test]
    fn a_group_runs_to_its_exit_or_is_stopped_at_its_deadline() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let group = ProcessGroup::start(&argv(&["sh", "-c", "exit 7"]), PopenConfig::default());
        assert_eq!(group.unwrap().run(None), Ending::Exited(ExitKind::Code(7)));
        let script = "sleep 60 & echo $!; wait";
        let config = PopenConfig { stdout: Redirection::Pipe, ..Default::default() };
        let mut group = ProcessGroup::start(&argv(&["sh", "-c", script]), config).unwrap();
        let pgid = group.pid();
        let mut first = String::new();
        let stdout = group.popen().stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first).unwrap();
        let sleeper: u32 = first.trim().parse().unwrap();
        let limit = Duration::from_millis(50);
        assert_eq!(
            group.kill_grace(Duration::from_millis(100)).run(Some(limit)),
            Ending::TimedOut(limit)
        );
        // The whole group was stopped, not only its leader.
        let alive = std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
            .is_some_and(|(state, _, pgrp)| pgrp == pgid && state != b'Z' && state != b'X');
        assert!(!alive, "the group's sleep {sleeper} survived");
    }

    #[test]
    fn stream_lines() {
        let mut lines = Vec::new();
        let out = ShellCommand::shell("printf 'a\\nb\\nc'")
            .output(OutputMode::Stream)
            .run_with(b"", &[], &|| false, &mut |l| lines.push(l.to_vec()))
            .unwrap();
        assert!(out.success());
        assert_eq!(lines, [b"a\n".to_vec(), b"b\n".to_vec(), b"c".to_vec()]);
        assert!(out.stdout.is_empty());
    }
}
