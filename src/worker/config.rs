//! The `worker:` section of config.yaml and its conversion into a
//! [`WorkerBuilder`](super::WorkerBuilder).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::shell::{OutputMode, ShellCommand};
use super::{Echo, FailKind, FunctionOptions, Handler, PayloadCommands, ShellFunction};
use crate::config::DurationStr;

/// The `worker:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSection {
    /// Client id shown by the admin `workers` command (default
    /// `gearframe-worker-PID`).
    pub name: String,
    /// Slots (threads and connections) per server.
    pub threads: usize,
    /// Servers, as a list or a comma-separated string (default:
    /// `GEARMAN_SERVERS`, else 127.0.0.1:4730).
    pub servers: ServerList,
    /// How long running jobs may go on after Ctrl-C or SIGTERM.
    pub grace: DurationStr,
    /// How long a slot polls for the server's reply before its read blocks (0: never).
    pub busy_poll: DurationStr,
    /// Largest packet body accepted from a server, in bytes.
    pub max_packet_size: u32,
    /// Ask gearframe's server to assign jobs directly instead of NOOP and a grab.
    pub push: bool,
    /// The functions, by name.
    pub functions: BTreeMap<String, FunctionSection>,
}

impl Default for WorkerSection {
    fn default() -> Self {
        WorkerSection {
            name: super::default_client_id(),
            threads: super::DEFAULT_THREADS,
            servers: ServerList::default(),
            grace: DurationStr(Duration::from_secs(30)),
            busy_poll: DurationStr(crate::busy_poll::DEFAULT_BUSY_POLL),
            max_packet_size: crate::proto::DEFAULT_MAX_BODY,
            push: true,
            functions: BTreeMap::new(),
        }
    }
}

pub use crate::config::ServerList;

/// Where a command's output goes (`output:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKey {
    /// Result = stdout; stderr tail in failures.
    #[default]
    Capture,
    /// stdout lines are sent as WORK_DATA.
    Stream,
    /// stdout and stderr go to the worker's terminal.
    Tty,
}

/// What the command gets on stdin (`stdin:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StdinKey {
    /// The job's payload.
    #[default]
    Payload,
    /// Nothing (`/dev/null`).
    None,
}

/// Built-in functions (`builtin:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Builtin {
    /// Completes with the payload.
    Echo,
}

/// One function under `worker: functions:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FunctionSection {
    /// Program and arguments, run without a shell.
    pub command: Option<Vec<String>>,
    /// A string for `/bin/sh -c`.
    pub shell: Option<String>,
    /// Run the command named in the payload (`{"command": ..., "argvs":
    /// ...}`), only when it is one of these.
    pub allowed_commands: Option<Vec<String>>,
    /// A built-in function instead of a command.
    pub builtin: Option<Builtin>,
    /// Wall-clock limit of one run.
    pub timeout: Option<DurationStr>,
    /// Time between SIGTERM and SIGKILL when a run is stopped.
    pub kill_grace: Option<DurationStr>,
    /// Leave running the processes a run started and left behind (daemons)
    /// instead of stopping them when it ends.
    pub keep_processes: bool,
    /// Runs of a failed job after the first before it is reported failed.
    pub retries: u32,
    /// Wait before the first retry; doubles for each later one.
    pub retry_backoff: Option<DurationStr>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// What the command reads on stdin.
    pub stdin: StdinKey,
    /// Where its output goes.
    pub output: OutputKey,
    /// Largest stdout kept as the result, in bytes.
    pub max_output: Option<usize>,
    /// Dead-letter function for jobs that failed for good.
    pub on_failure: Option<String>,
    /// Register with CAN_DO_TIMEOUT: the server requeues longer jobs.
    pub server_timeout: Option<DurationStr>,
    /// How failures are sent: `auto` (chosen per server so that every
    /// client ends and sees the message), `exception` (WORK_EXCEPTION) or
    /// `fail` (WORK_WARNING with the message, then WORK_FAIL).
    pub failure: FailureKey,
}

/// How a failed command is reported (`failure:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKey {
    /// WORK_WARNING with the message, then WORK_EXCEPTION on gearframe's
    /// server and WORK_FAIL on the others ([`FailKind::Auto`]).
    #[default]
    Auto,
    /// WORK_EXCEPTION with the message, on every server.
    Exception,
    /// WORK_WARNING with the message, then WORK_FAIL.
    Fail,
}

impl WorkerSection {
    /// Checks every function; the message names the key to fix.
    ///
    /// # Errors
    /// A bad value, with its key path.
    pub fn validate(&self) -> Result<(), String> {
        if self.threads == 0 {
            return Err("worker.threads: must be at least 1".into());
        }
        if self.name.is_empty() || self.name.len() > 127 {
            return Err("worker.name: must be 1 to 127 bytes".into());
        }
        for (name, f) in &self.functions {
            f.validate().map_err(|e| format!("worker.functions.{name}: {e}"))?;
        }
        self.check_on_failure_cycles()
    }

    /// Refuses an `on_failure` chain among these functions that comes back
    /// to a function already in it (`a` naming itself, or `a -> b -> a`): a
    /// job failing there would be resubmitted forever.
    fn check_on_failure_cycles(&self) -> Result<(), String> {
        for start in self.functions.keys() {
            let mut chain = vec![start.as_str()];
            let mut at = start.as_str();
            while let Some(next) = self.functions.get(at).and_then(|f| f.on_failure.as_deref()) {
                if chain.contains(&next) {
                    chain.push(next);
                    return Err(format!(
                        "worker.functions.{at}.on_failure: {} loops, so a failing job would be \
                         resubmitted forever; end the chain at a function without on_failure",
                        chain.join(" -> ")
                    ));
                }
                chain.push(next);
                at = next;
            }
        }
        Ok(())
    }
}

impl FunctionSection {
    /// The built-in echo function.
    pub fn echo() -> FunctionSection {
        FunctionSection { builtin: Some(Builtin::Echo), ..Default::default() }
    }

    /// A function that runs `argv`.
    pub fn command(argv: Vec<String>) -> FunctionSection {
        FunctionSection { command: Some(argv), ..Default::default() }
    }

    /// Checks the function's keys.
    ///
    /// # Errors
    /// A message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let kinds = [
            self.command.is_some(),
            self.shell.is_some(),
            self.allowed_commands.is_some(),
            self.builtin.is_some(),
        ];
        match kinds.iter().filter(|k| **k).count() {
            0 => return Err("set one of command, shell, allowed_commands or builtin".into()),
            1 => {}
            _ => return Err("set only one of command, shell, allowed_commands or builtin".into()),
        }
        if self.command.as_ref().is_some_and(|c| c.is_empty() || c[0].is_empty()) {
            return Err("command: give the program and its arguments as a list".into());
        }
        if self.shell.as_ref().is_some_and(|s| s.trim().is_empty()) {
            return Err("shell: empty".into());
        }
        if self.allowed_commands.as_ref().is_some_and(|c| c.is_empty()) {
            return Err("allowed_commands: list at least one command".into());
        }
        if let Some(dir) = &self.cwd
            && !dir.is_dir()
        {
            return Err(format!("cwd: {} is not a directory", dir.display()));
        }
        if self.on_failure.as_ref().is_some_and(|f| f.is_empty() || f.contains('\0')) {
            return Err("on_failure: give a function name".into());
        }
        if self.max_output == Some(0) {
            return Err("max_output: must be at least 1".into());
        }
        Ok(())
    }

    /// The handler and options this section describes.
    pub fn to_function(&self) -> (Arc<dyn Handler>, FunctionOptions) {
        let options = FunctionOptions {
            retries: self.retries,
            retry_backoff: self.retry_backoff.map_or(Duration::from_secs(1), |d| d.0),
            server_timeout: self.server_timeout.map(|d| d.0).filter(|d| !d.is_zero()),
            on_failure: self.on_failure.clone(),
        };
        if self.builtin == Some(Builtin::Echo) {
            return (Arc::new(Echo), options);
        }
        let program = match (&self.command, &self.shell) {
            (Some(argv), _) => super::shell::Program::Argv(argv.iter().map(Into::into).collect()),
            (None, Some(s)) => super::shell::Program::Shell(s.clone()),
            (None, None) => super::shell::Program::Argv(Vec::new()),
        };
        let mut cmd = ShellCommand::new(program)
            .cwd(self.cwd.clone())
            .timeout(self.timeout.map(|d| d.0).filter(|d| !d.is_zero()))
            .stdin(self.stdin == StdinKey::Payload)
            .keep_processes(self.keep_processes)
            .output(match self.output {
                OutputKey::Capture => OutputMode::Capture,
                OutputKey::Stream => OutputMode::Stream,
                OutputKey::Tty => OutputMode::Tty,
            });
        if let Some(g) = self.kill_grace {
            cmd = cmd.kill_grace(g.0);
        }
        if let Some(n) = self.max_output {
            cmd = cmd.max_stdout(n);
        }
        for (k, v) in &self.env {
            cmd = cmd.env(k, v);
        }
        let handler = match &self.allowed_commands {
            Some(list) => ShellFunction::from_payload(cmd, PayloadCommands::new(list.clone())),
            None => ShellFunction::new(cmd),
        };
        let handler = handler.failure(match self.failure {
            FailureKey::Auto => FailKind::Auto,
            FailureKey::Exception => FailKind::Exception,
            FailureKey::Fail => FailKind::Fail,
        });
        (Arc::new(handler), options)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn worker_section() {
        let c = Config::parse(
            "worker:\n  name: w1\n  threads: 3\n  servers: a:1,b\n  functions:\n    wc:\n      command: [wc, -l]\n      timeout: 5s\n      retries: 2\n    up:\n      shell: tr a-z A-Z\n      output: stream\n",
        )
        .unwrap();
        let w = &c.worker;
        assert_eq!(w.name, "w1");
        assert_eq!(w.threads, 3);
        assert_eq!(w.servers.to_vec().unwrap(), ["a:1", "b:4730"]);
        assert_eq!(w.functions["wc"].retries, 2);
        assert_eq!(w.functions["wc"].failure, super::FailureKey::Auto);
        assert!(!w.functions["wc"].keep_processes);
        w.validate().unwrap();
        let c = Config::parse(
            "worker:\n  functions:\n    d:\n      shell: ./start-daemon\n      keep_processes: true\n",
        )
        .unwrap();
        assert!(c.worker.functions["d"].keep_processes);
        let c = Config::parse(
            "worker:\n  functions:\n    e:\n      shell: x\n      failure: exception\n",
        )
        .unwrap();
        assert_eq!(c.worker.functions["e"].failure, super::FailureKey::Exception);
        let c = Config::parse("worker:\n  servers: [x, 'y:5']\n").unwrap();
        assert_eq!(c.worker.servers.to_vec().unwrap(), ["x:4730", "y:5"]);
    }

    #[test]
    fn worker_errors_name_the_key() {
        let e = Config::parse("worker:\n  functions:\n    f:\n      comand: [x]\n").unwrap_err();
        assert!(e.key.ends_with("comand"), "{e}");
        let c = Config::parse("worker:\n  functions:\n    f:\n      timeout: 5s\n").unwrap();
        let e = c.worker.validate().unwrap_err();
        assert!(e.starts_with("worker.functions.f: set one of"), "{e}");
        let c =
            Config::parse("worker:\n  functions:\n    f:\n      command: [a]\n      shell: b\n")
                .unwrap();
        assert!(c.worker.validate().unwrap_err().contains("only one"));
        let e = Config::parse("worker:\n  functions:\n    f:\n      output: pipe\n").unwrap_err();
        assert!(e.reason.contains("pipe"), "{e}");
    }

    #[test]
    fn on_failure_cycles_are_refused_with_the_chain() {
        let check = |text: &str| Config::parse(text).unwrap().worker.validate();
        let own =
            check("worker:\n  functions:\n    a:\n      builtin: echo\n      on_failure: a\n");
        let e = own.unwrap_err();
        assert!(e.starts_with("worker.functions.a.on_failure: a -> a loops"), "{e}");
        let two = "worker:\n  functions:\n    a:\n      builtin: echo\n      on_failure: b\n    b:\n      builtin: echo\n      on_failure: a\n";
        let e = check(two).unwrap_err();
        assert!(e.contains("a -> b -> a loops"), "{e}");
        assert_eq!(e.lines().count(), 1);
        // A chain that ends, here or at a function served elsewhere, is fine.
        let ends = "worker:\n  functions:\n    a:\n      builtin: echo\n      on_failure: b\n    b:\n      builtin: echo\n      on_failure: dead\n";
        check(ends).unwrap();
    }
}
