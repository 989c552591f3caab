//! [`WorkerConfig`]: every setting of a [`Worker`](super::Worker), also the
//! `worker:` section of config.yaml, with its functions
//! ([`FunctionConfig`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::shell::{Program, ShellCommand};
use super::{Echo, FailKind, FunctionOptions, Handler, PayloadCommands, ShellFunction};

pub use crate::config::ServerList;

/// The settings of a [`Worker`](super::Worker): what
/// [`WorkerBuilder`](super::WorkerBuilder) sets, and the `worker:` section
/// of config.yaml. Durations are written with a unit in the file (`500ms`,
/// `15s`, `1h`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct WorkerConfig {
    /// Client id shown by the admin `workers` command (SET_CLIENT_ID), 1 to
    /// 127 bytes; none: gearframe-worker-PID.
    #[cfg_attr(feature = "cli", arg(long, value_name = "NAME"))]
    pub name: Option<String>,
    /// Slots (threads and connections) per server.
    #[cfg_attr(feature = "cli", arg(short = 't', long, value_name = "N"))]
    pub threads: usize,
    /// Servers to work for, each `host[:port]` or a comma-separated list of
    /// them (see [`parse_server_list`](crate::conn::parse_server_list)).
    /// None: `GEARMAN_SERVERS`, else 127.0.0.1:4730.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub servers: ServerList,
    /// How long running jobs may go on after a shutdown (Ctrl-C or SIGTERM)
    /// before they are cancelled, e.g. 30s; `gearframe worker` and `up` stop
    /// them at once on a second Ctrl-C or SIGTERM.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)
    )]
    #[serde(with = "crate::config::duration")]
    pub grace: Duration,
    /// Longest wait for a NOOP before grabbing anyway.
    #[cfg_attr(feature = "cli", arg(skip))]
    #[serde(with = "crate::config::duration")]
    pub sleep_timeout: Duration,
    /// Limit of one TCP connect.
    #[cfg_attr(feature = "cli", arg(skip))]
    #[serde(with = "crate::config::duration")]
    pub connect_timeout: Duration,
    /// Longest wait for a reply to GRAB_JOB_UNIQ or SUBMIT_JOB_BG, and for
    /// one write.
    #[cfg_attr(feature = "cli", arg(skip))]
    #[serde(with = "crate::config::duration")]
    pub io_timeout: Duration,
    /// The first reconnect back-off after a failure; it doubles with each
    /// failure in a row up to `backoff_max`, each wait jittered down to half.
    #[cfg_attr(feature = "cli", arg(skip))]
    #[serde(with = "crate::config::duration")]
    pub backoff_min: Duration,
    /// The longest reconnect back-off (at least `backoff_min`).
    #[cfg_attr(feature = "cli", arg(skip))]
    #[serde(with = "crate::config::duration")]
    pub backoff_max: Duration,
    /// How long a slot polls for the server's reply before its read blocks
    /// (zero never polls); see [`crate::busy_poll`].
    #[cfg_attr(feature = "cli", arg(skip))]
    #[serde(with = "crate::config::duration")]
    pub busy_poll: Duration,
    /// Largest packet body accepted from a server, in bytes; a packet
    /// declaring more closes the slot's connection, and the slot reconnects.
    #[cfg_attr(feature = "cli", arg(long, value_name = "BYTES"))]
    pub max_packet_size: u32,
    /// Whether slots ask the server to assign them jobs directly (the
    /// [`PUSH_OPTION`](crate::proto::PUSH_OPTION)) instead of waking them
    /// with NOOP to grab. Only gearframe's server offers it; with other
    /// servers the slots keep to NOOP and grabs either way.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub push: bool,
    /// Whether `{"SHUTDOWN": true}` jobs stop a slot.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub shutdown_jobs: bool,
    /// The functions, by name; [`WorkerBuilder::build`](super::WorkerBuilder::build)
    /// registers each one that was not registered by that name.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub functions: BTreeMap<String, FunctionConfig>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            name: None,
            threads: super::DEFAULT_THREADS,
            servers: ServerList::None,
            grace: Duration::from_secs(30),
            sleep_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            busy_poll: crate::busy_poll::DEFAULT_BUSY_POLL,
            max_packet_size: crate::proto::DEFAULT_MAX_BODY,
            push: true,
            shutdown_jobs: true,
            functions: BTreeMap::new(),
        }
    }
}

/// Built-in functions (`builtin:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Builtin {
    /// Completes with the payload.
    Echo,
}

/// One function under `worker.functions`: a command to run (its keys are
/// those of [`ShellCommand`]), a command taken from each payload
/// (`allowed_commands`, with the other keys of [`ShellCommand`]) or a
/// built-in, with the [`FunctionOptions`] keys and `failure`.
// The private field reads the keys no part took; it is not there to stop
// struct literals.
#[allow(clippy::manual_non_exhaustive)]
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct FunctionConfig {
    /// A built-in function instead of a command.
    pub builtin: Option<Builtin>,
    /// Run the command named in the payload (`{"command": ..., "argvs":
    /// ...}`), only when it is one of these.
    pub allowed_commands: Option<Vec<String>>,
    /// How failures are sent: `auto` (chosen per server so that every
    /// client ends and sees the message), `exception` (WORK_EXCEPTION) or
    /// `fail` (WORK_WARNING with the message, then WORK_FAIL).
    pub failure: FailKind,
    /// The command and its limits (no program for `builtin` and
    /// `allowed_commands`).
    #[serde(flatten, with = "keys::tracked")]
    pub command: ShellCommand,
    /// Retries, dead-letter function, CAN_DO_TIMEOUT.
    #[serde(flatten, with = "keys::tracked")]
    pub options: FunctionOptions,
    /// Refuses the keys that no part took.
    #[serde(flatten, deserialize_with = "keys::none_left", skip_serializing)]
    rest: (),
}

impl WorkerConfig {
    /// Checks every function; the message names the key to fix.
    ///
    /// # Errors
    /// A bad value, with its key path.
    pub fn validate(&self) -> Result<(), String> {
        if self.threads == 0 {
            return Err("worker.threads: must be at least 1".into());
        }
        if self.name.as_ref().is_some_and(|n| n.is_empty() || n.len() > 127) {
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
            while let Some(next) =
                self.functions.get(at).and_then(|f| f.options.on_failure.as_deref())
            {
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

impl FunctionConfig {
    /// The built-in echo function.
    pub fn echo() -> FunctionConfig {
        FunctionConfig { builtin: Some(Builtin::Echo), ..Default::default() }
    }

    /// A function that runs `command`.
    pub fn command(command: ShellCommand) -> FunctionConfig {
        FunctionConfig { command, ..Default::default() }
    }

    /// A function that runs the commands of `allowed` named in each payload.
    pub fn allowed_commands(allowed: Vec<String>) -> FunctionConfig {
        FunctionConfig { allowed_commands: Some(allowed), ..Default::default() }
    }

    /// Whether a program is set (`command` or `shell`).
    fn has_program(&self) -> bool {
        !matches!(self.command.program(), Program::Argv(a) if a.is_empty())
    }

    /// Checks the function's keys.
    ///
    /// # Errors
    /// A message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let kinds = [self.has_program(), self.allowed_commands.is_some(), self.builtin.is_some()];
        match kinds.iter().filter(|k| **k).count() {
            0 => return Err("set one of command, shell, allowed_commands or builtin".into()),
            1 => {}
            _ => return Err("set only one of command, shell, allowed_commands or builtin".into()),
        }
        if self.allowed_commands.as_ref().is_some_and(|c| c.is_empty()) {
            return Err("allowed_commands: list at least one command".into());
        }
        if let Some(dir) = &self.command.cwd
            && !dir.is_dir()
        {
            return Err(format!("cwd: {} is not a directory", dir.display()));
        }
        if self.options.on_failure.as_ref().is_some_and(|f| f.is_empty() || f.contains('\0')) {
            return Err("on_failure: give a function name".into());
        }
        if self.command.max_stdout == 0 {
            return Err("max_output: must be at least 1".into());
        }
        Ok(())
    }

    /// The handler and options this function describes.
    pub fn to_function(&self) -> (Arc<dyn Handler>, FunctionOptions) {
        let options = self.options.clone();
        if self.builtin == Some(Builtin::Echo) {
            return (Arc::new(Echo), options);
        }
        let handler = match &self.allowed_commands {
            Some(list) => ShellFunction::from_payload(
                self.command.clone(),
                PayloadCommands::new(list.clone()),
            ),
            None => ShellFunction::new(self.command.clone()),
        };
        (Arc::new(handler.failure(self.failure)), options)
    }
}

/// How the keys of a function entry are read and written.
pub(crate) mod keys {
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::time::Duration;

    use serde::de::{Error as _, MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::worker::shell::{Program, ShellCommand};

    /// A scalar read as text: `[sleep, 5]` is two strings.
    struct Text(String);

    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            match serde_yaml::Value::deserialize(d)? {
                serde_yaml::Value::String(s) => Ok(Text(s)),
                serde_yaml::Value::Number(n) => Ok(Text(n.to_string())),
                serde_yaml::Value::Bool(b) => Ok(Text(b.to_string())),
                other => Err(D::Error::custom(format!(
                    "invalid type: {}, expected a string",
                    kind(&other)
                ))),
            }
        }
    }

    fn kind(v: &serde_yaml::Value) -> &'static str {
        match v {
            serde_yaml::Value::Null => "null",
            serde_yaml::Value::Sequence(_) => "sequence",
            serde_yaml::Value::Mapping(_) => "map",
            _ => "tagged value",
        }
    }

    /// A part of a function entry (its keys among the entry's), with the
    /// key of an error in front of its message (`timeout: invalid
    /// duration`), as the part was read from the entry's buffered keys.
    pub(crate) mod tracked {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        pub(crate) fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
        where
            D: Deserializer<'de>,
            T: Deserialize<'de>,
        {
            serde_path_to_error::deserialize(d).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." || path.is_empty() {
                    inner
                } else {
                    serde::de::Error::custom(format!("{path}: {inner}"))
                }
            })
        }

        pub(crate) fn serialize<S: Serializer, T: Serialize>(
            v: &T,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            v.serialize(s)
        }
    }

    /// The keys no part of the entry took: an error naming the first.
    pub(crate) fn none_left<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        let rest = BTreeMap::<String, serde::de::IgnoredAny>::deserialize(d)?;
        match rest.keys().next() {
            Some(key) => Err(D::Error::custom(format!("unknown field `{key}`"))),
            None => Ok(()),
        }
    }

    /// The keys of a [`ShellCommand`].
    const COMMAND_KEYS: &[&str] = &[
        "command",
        "shell",
        "cwd",
        "env",
        "timeout",
        "kill_grace",
        "keep_processes",
        "stdin",
        "output",
        "max_output",
    ];

    impl<'de> Deserialize<'de> for ShellCommand {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_struct("ShellCommand", COMMAND_KEYS, CommandKeys)
        }
    }

    #[derive(Deserialize)]
    struct Env(#[serde(deserialize_with = "env_map")] Vec<(OsString, OsString)>);
    #[derive(Deserialize)]
    struct Limit(#[serde(deserialize_with = "limit::deserialize")] Option<Duration>);
    #[derive(Deserialize)]
    struct Wait(#[serde(with = "crate::config::duration")] Duration);
    #[derive(Deserialize)]
    struct Stdin(#[serde(deserialize_with = "stdin_key")] bool);

    struct CommandKeys;

    impl<'de> Visitor<'de> for CommandKeys {
        type Value = ShellCommand;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ShellCommand, A::Error> {
            let (mut argv, mut shell) = (None::<Vec<Text>>, None::<Text>);
            let mut cmd = ShellCommand::default();
            while let Some(key) = map.next_key::<String>()? {
                cmd = match key.as_str() {
                    "command" => {
                        argv = Some(map.next_value()?);
                        cmd
                    }
                    "shell" => {
                        shell = Some(map.next_value()?);
                        cmd
                    }
                    "cwd" => cmd.cwd(map.next_value()?),
                    "env" => {
                        let Env(env) = map.next_value()?;
                        env.into_iter().fold(cmd, |c, (k, v)| c.env(k, v))
                    }
                    "timeout" => cmd.timeout(map.next_value::<Limit>()?.0),
                    "kill_grace" => cmd.kill_grace(map.next_value::<Wait>()?.0),
                    "keep_processes" => cmd.keep_processes(map.next_value()?),
                    "stdin" => cmd.stdin(map.next_value::<Stdin>()?.0),
                    "output" => cmd.output(map.next_value()?),
                    "max_output" => cmd.max_stdout(map.next_value()?),
                    other => return Err(A::Error::unknown_field(other, COMMAND_KEYS)),
                };
            }
            let program = match (argv, shell) {
                (Some(_), Some(_)) => {
                    return Err(A::Error::custom(
                        "set only one of command, shell, allowed_commands or builtin",
                    ));
                }
                (Some(argv), None) => {
                    if argv.first().is_none_or(|p| p.0.is_empty()) {
                        return Err(A::Error::custom(
                            "command: give the program and its arguments as a list",
                        ));
                    }
                    Program::Argv(argv.into_iter().map(|a| a.0.into()).collect())
                }
                (None, Some(s)) if s.0.trim().is_empty() => {
                    return Err(A::Error::custom("shell: empty"));
                }
                (None, Some(s)) => Program::Shell(s.0),
                (None, None) => return Ok(cmd),
            };
            Ok(cmd.with_program(program))
        }
    }

    /// Writes `command: [program, args...]` or `shell: "string"`.
    pub(crate) fn program<S: Serializer>(p: &Program, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match p {
            Program::Argv(a) if a.is_empty() => {}
            Program::Argv(a) => {
                let argv: Vec<_> = a.iter().map(|x| x.to_string_lossy()).collect();
                map.serialize_entry("command", &argv)?;
            }
            Program::Shell(sh) => map.serialize_entry("shell", sh)?,
        }
        map.end()
    }

    /// Reads `env: {NAME: value}`.
    fn env_map<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(OsString, OsString)>, D::Error> {
        let map = BTreeMap::<String, Text>::deserialize(d)?;
        Ok(map.into_iter().map(|(k, v)| (k.into(), v.0.into())).collect())
    }

    /// Writes `env: {NAME: value}`.
    pub(crate) fn env<S: Serializer>(
        env: &[(OsString, OsString)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let map: BTreeMap<_, _> =
            env.iter().map(|(k, v)| (k.to_string_lossy(), v.to_string_lossy())).collect();
        map.serialize(s)
    }

    /// An optional limit: a duration, `0` or none for no limit.
    pub(crate) mod limit {
        use super::*;

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            let d = crate::config::duration::option::deserialize(d)?;
            Ok(d.filter(|d| !d.is_zero()))
        }

        pub(crate) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            crate::config::duration::option::serialize(d, s)
        }
    }

    /// Reads `stdin: payload` (the job's payload) or `stdin: none` (`/dev/null`).
    fn stdin_key<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match String::deserialize(d)?.as_str() {
            "payload" => Ok(true),
            "none" => Ok(false),
            other => Err(D::Error::unknown_variant(other, &["payload", "none"])),
        }
    }

    /// Writes `stdin: payload` or `stdin: none`.
    pub(crate) fn stdin<S: Serializer>(payload: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if *payload { "payload" } else { "none" })
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
        assert_eq!(w.name.as_deref(), Some("w1"));
        assert_eq!(w.threads, 3);
        assert_eq!(w.servers.to_vec().unwrap(), ["a:1", "b:4730"]);
        assert_eq!(w.functions["wc"].options.retries, 2);
        assert_eq!(w.functions["wc"].failure, super::FailKind::Auto);
        assert!(!w.functions["wc"].command.keep_processes);
        w.validate().unwrap();
        let c = Config::parse(
            "worker:\n  functions:\n    d:\n      shell: ./start-daemon\n      keep_processes: true\n",
        )
        .unwrap();
        assert!(c.worker.functions["d"].command.keep_processes);
        let c = Config::parse(
            "worker:\n  functions:\n    e:\n      shell: x\n      failure: exception\n",
        )
        .unwrap();
        assert_eq!(c.worker.functions["e"].failure, super::FailKind::Exception);
        let c = Config::parse("worker:\n  servers: [x, 'y:5']\n").unwrap();
        assert_eq!(c.worker.servers.to_vec().unwrap(), ["x:4730", "y:5"]);
    }

    #[test]
    fn a_written_config_reads_back_the_same() {
        let c = Config::read(include_str!("../../config.yaml")).unwrap();
        let mut worker = c.worker.clone();
        worker.name = Some("w".into());
        let f = worker.functions.get_mut("wc").unwrap();
        f.command = f.command.clone().env("A", "1").cwd(Some("/".into()));
        f.options.on_failure = Some("dead".into());
        let text = serde_yaml::to_string(&worker).unwrap();
        let back: super::WorkerConfig = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, worker, "{text}");
    }

    #[test]
    fn worker_errors_name_the_key() {
        let e = Config::parse("worker:\n  functions:\n    f:\n      comand: [x]\n").unwrap_err();
        assert!(e.key.ends_with("comand"), "{e}");
        let c = Config::parse("worker:\n  functions:\n    f:\n      timeout: 5s\n").unwrap();
        let e = c.worker.validate().unwrap_err();
        assert!(e.starts_with("worker.functions.f: set one of"), "{e}");
        // A command has one program: a second one is refused as it is read.
        let e =
            Config::parse("worker:\n  functions:\n    f:\n      command: [a]\n      shell: b\n")
                .unwrap_err();
        assert_eq!((e.key.as_str(), e.line, e.column), ("worker.functions.f", Some(3), Some(5)));
        assert!(e.reason.starts_with("set only one"), "{e}");
        let c =
            Config::parse("worker:\n  functions:\n    f:\n      shell: a\n      builtin: echo\n")
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
