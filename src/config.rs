//! config.yaml: the file model, its defaults, and validation with errors
//! that name the key to fix.
//!
//! Unknown keys are errors. Durations are written with a unit: `500ms`,
//! `15s`, `2m`, `1h`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use crate::admin::AdminSection;
pub use crate::worker::config::{FunctionSection, WorkerSection};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The `server:` section.
    pub server: ServerSection,
    /// The `worker:` section.
    #[serde(default)]
    pub worker: WorkerSection,
    /// The `client:` section.
    #[serde(default)]
    pub client: ClientSection,
    /// The `admin:` section.
    #[serde(default)]
    pub admin: AdminSection,
    /// The `log:` section.
    #[serde(default)]
    pub log: LogSection,
}

/// The `log:` section of the `gearframe` command (the library only logs
/// through the `log` facade).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Level when neither `-v`/`-q` nor `RUST_LOG` say otherwise: `error`,
    /// `warn`, `info`, `debug` or `trace`.
    pub level: LogLevel,
    /// Also append every log line to this file; errors still go to stderr.
    pub file: Option<std::path::PathBuf>,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { level: LogLevel::Warn, file: None }
    }
}

/// A log level as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The filter string `env_logger` understands.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The `server:` section; each key mirrors a `gearframe server` option.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address to listen on.
    pub listen: String,
    /// Drop a job once it was started this many times (0 = unlimited).
    pub job_retries: u32,
    /// NOOPs per queued job (0 = wake every sleeping worker).
    pub worker_wakeup: u32,
    /// Rotate each worker's function order after every job.
    pub round_robin: bool,
    /// Job handle prefix (default `H:<hostname>`).
    pub job_handle_prefix: Option<String>,
    /// Largest packet body accepted, in bytes.
    pub max_packet_size: u32,
    /// Most connections served at once (0: the file descriptor limit minus
    /// [`FD_RESERVE`](crate::server::FD_RESERVE)).
    pub max_connections: usize,
    /// Every connection starts with the `exceptions` option on.
    pub exceptions: bool,
    /// How long one write to a peer may block before it is disconnected.
    pub write_timeout: DurationStr,
    /// How long a started packet or admin line may take to arrive (0: no limit).
    pub read_timeout: DurationStr,
    /// Most bytes held by partial packets across all connections (0 = unlimited).
    pub max_buffered_bytes: usize,
    /// How long a connection's reader polls for the next request before it
    /// blocks (0: never).
    pub busy_poll: DurationStr,
    /// Persistent queue for background jobs: `sqlite:PATH` (none: memory only).
    pub queue: Option<String>,
    /// Write the persistent queue only when the server stops.
    pub store_queue_on_shutdown: bool,
    /// maxqueue of every function until `maxqueue` changes it (0 = unlimited).
    pub max_queue: u32,
    /// Most jobs held in total (0 = unlimited).
    pub max_jobs: usize,
    /// Most payload bytes held in total (0 = unlimited).
    pub max_payload_bytes: usize,
    /// Bytes waiting for one peer before it is disconnected.
    pub max_outbox: usize,
    /// Addresses or networks allowed to run admin commands that change state
    /// or list jobs and connections.
    pub admin_allow: Vec<String>,
}

/// Parses `sqlite:PATH`.
///
/// # Errors
/// Any other form, naming the value.
pub fn parse_queue(s: &str) -> Result<std::path::PathBuf, String> {
    match s.split_once(':') {
        Some(("sqlite", path)) if !path.is_empty() => Ok(path.into()),
        _ => Err(format!("unknown queue `{s}`: write sqlite:PATH")),
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        let d = crate::server::ServerConfig::default();
        ServerSection {
            listen: d.listen,
            job_retries: d.job_retries,
            worker_wakeup: d.worker_wakeup,
            round_robin: d.round_robin,
            job_handle_prefix: d.job_handle_prefix,
            max_packet_size: d.max_packet_size,
            max_connections: d.max_connections,
            exceptions: d.exceptions,
            write_timeout: DurationStr(d.write_timeout),
            read_timeout: DurationStr(d.read_timeout),
            max_buffered_bytes: d.max_buffered_bytes,
            busy_poll: DurationStr(d.busy_poll),
            queue: None,
            store_queue_on_shutdown: false,
            max_queue: d.max_queue,
            max_jobs: d.max_jobs,
            max_payload_bytes: d.max_payload_bytes,
            max_outbox: d.max_outbox,
            admin_allow: Vec::new(),
        }
    }
}

impl ServerSection {
    /// The server settings this section describes.
    ///
    /// # Errors
    /// A bad `queue` or `admin_allow` value, naming the key.
    pub fn to_server_config(&self) -> Result<crate::server::ServerConfig, ConfigError> {
        let queue = match &self.queue {
            Some(q) => Some(parse_queue(q).map_err(|e| ConfigError(format!("server.queue: {e}")))?),
            None => None,
        };
        let admin_allow = self
            .admin_allow
            .iter()
            .map(|r| r.parse().map_err(|e| ConfigError(format!("server.admin_allow: {e}"))))
            .collect::<Result<_, _>>()?;
        Ok(crate::server::ServerConfig {
            listen: self.listen.clone(),
            job_retries: self.job_retries,
            worker_wakeup: self.worker_wakeup,
            round_robin: self.round_robin,
            job_handle_prefix: self.job_handle_prefix.clone(),
            max_packet_size: self.max_packet_size,
            max_connections: self.max_connections,
            exceptions: self.exceptions,
            write_timeout: self.write_timeout.0,
            read_timeout: self.read_timeout.0,
            max_buffered_bytes: self.max_buffered_bytes,
            busy_poll: self.busy_poll.0,
            queue,
            durability: if self.store_queue_on_shutdown {
                crate::server::Durability::OnShutdown
            } else {
                crate::server::Durability::Sync
            },
            max_queue: self.max_queue,
            max_jobs: self.max_jobs,
            max_payload_bytes: self.max_payload_bytes,
            max_outbox: self.max_outbox,
            admin_allow,
        })
    }
}

/// The `client:` section: `gearframe submit`, `gearframe send`, and the
/// library's [`ClientBuilder`](crate::client::ClientBuilder) defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSection {
    /// Job servers (`host[:port]`); empty means `GEARMAN_SERVERS`, else
    /// 127.0.0.1:4730.
    pub servers: Vec<String>,
    /// Limit of one TCP connect.
    pub connect_timeout: DurationStr,
    /// Limit of the wait for JOB_CREATED and other replies.
    pub ack_timeout: DurationStr,
    /// How long a job keeps being tried on other servers after a failure.
    pub retry_timeout: DurationStr,
    /// Overall limit of one job.
    pub job_timeout: DurationStr,
    /// Most jobs in flight per server connection in a batch.
    pub window: usize,
    /// First reconnect back-off.
    pub backoff_min: DurationStr,
    /// Longest reconnect back-off.
    pub backoff_max: DurationStr,
    /// Ask for WORK_EXCEPTION packets, so that failures carry their reason.
    pub exceptions: bool,
    /// Connection name (SET_CLIENT_ID).
    pub client_id: Option<String>,
    /// How long a connection polls for a reply before its read blocks (0: never).
    pub busy_poll: DurationStr,
    /// The `client.send:` subsection (`gearframe send`).
    pub send: SendSection,
}

impl Default for ClientSection {
    fn default() -> Self {
        ClientSection {
            servers: Vec::new(),
            connect_timeout: DurationStr(Duration::from_secs(3)),
            ack_timeout: DurationStr(Duration::from_secs(10)),
            retry_timeout: DurationStr(Duration::from_secs(30)),
            job_timeout: DurationStr(Duration::from_secs(3600)),
            window: 1024,
            backoff_min: DurationStr(Duration::from_millis(100)),
            backoff_max: DurationStr(Duration::from_secs(5)),
            exceptions: true,
            client_id: None,
            busy_poll: DurationStr(crate::busy_poll::DEFAULT_BUSY_POLL),
            send: SendSection::default(),
        }
    }
}

impl ClientSection {
    /// A client builder with this section's settings (servers only when
    /// the list is not empty, so that `GEARMAN_SERVERS` still applies).
    pub fn to_builder(&self) -> crate::client::ClientBuilder {
        let mut b = crate::client::Client::builder()
            .connect_timeout(self.connect_timeout.0)
            .ack_timeout(self.ack_timeout.0)
            .retry_timeout(self.retry_timeout.0)
            .job_timeout(self.job_timeout.0)
            .window(self.window)
            .backoff(self.backoff_min.0, self.backoff_max.0)
            .exceptions(self.exceptions)
            .busy_poll(self.busy_poll.0);
        if !self.servers.is_empty() {
            b = b.servers(&self.servers);
        }
        if let Some(id) = &self.client_id {
            b = b.client_id(id.clone());
        }
        b
    }
}

/// How `gearframe send` submits a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendMode {
    /// Background jobs; done when every job is accepted.
    #[default]
    Async,
    /// Foreground jobs; done when every job has its result.
    Sync,
}

impl std::str::FromStr for SendMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "async" => Ok(SendMode::Async),
            "sync" => Ok(SendMode::Sync),
            _ => Err(format!("unknown mode `{s}`: use async or sync")),
        }
    }
}

/// The `client.send:` subsection; each key mirrors a `gearframe send` option.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendSection {
    /// The plan: a YAML file, or an executable that prints the jobs as JSON.
    pub plan: std::path::PathBuf,
    /// `async` or `sync`.
    pub mode: SendMode,
    /// Send the plan again every interval; 0 sends it once.
    pub cycle: DurationStr,
    /// Read the plan again at most this often (between cycles).
    pub reload: DurationStr,
}

impl Default for SendSection {
    fn default() -> Self {
        SendSection {
            plan: "plugin/eg.yaml".into(),
            mode: SendMode::Async,
            cycle: DurationStr(Duration::ZERO),
            reload: DurationStr(Duration::from_secs(60)),
        }
    }
}

/// A duration written with a unit in the file (`500ms`, `15s`, `2m`, `1h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationStr(pub Duration);

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(DurationStr).map_err(serde::de::Error::custom)
    }
}

/// Parses `500ms`, `15s`, `1.5s`, `2m`, `1h`, or `0`.
///
/// # Errors
/// A message naming the value and the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!(
            "invalid duration `{s}`: write a number with a unit, such as 100us, 500ms, 15s, 2m or 1h"
        )
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Why a config file could not be used.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a file.
    ///
    /// # Errors
    /// The file cannot be read, is not valid YAML, has an unknown key or a
    /// bad value; the message names the file and the key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
        Config::parse(&text).map_err(|e| ConfigError(format!("config {}: {}", path.display(), e.0)))
    }

    /// Parses YAML text.
    ///
    /// # Errors
    /// Invalid YAML, an unknown key, or a bad value.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let cfg: Config = serde_yaml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("50us"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_duration("50µs"), Ok(Duration::from_micros(50)));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("server:\n  listn: 1.2.3.4:1\n").unwrap_err();
        assert!(e.0.contains("listn"), "{}", e.0);
        let e = Config::parse("sever: {}\n").unwrap_err();
        assert!(e.0.contains("sever"), "{}", e.0);
    }

    #[test]
    fn server_section() {
        let c = Config::parse(
            "server:\n  listen: 127.0.0.1:0\n  job_retries: 3\n  write_timeout: 2s\n  busy_poll: 0\n",
        )
        .unwrap();
        let s = c.server.to_server_config().unwrap();
        assert_eq!(s.busy_poll, Duration::ZERO);
        assert_eq!(s.listen, "127.0.0.1:0");
        assert_eq!(s.job_retries, 3);
        assert_eq!(s.write_timeout, Duration::from_secs(2));
    }

    #[test]
    fn client_section() {
        let c = Config::parse(
            "client:\n  servers: [a, 'b:7003']\n  ack_timeout: 2s\n  send:\n    mode: sync\n    cycle: 500ms\n",
        )
        .unwrap();
        assert_eq!(c.client.servers, ["a", "b:7003"]);
        assert_eq!(c.client.ack_timeout.0, Duration::from_secs(2));
        assert_eq!(c.client.send.mode, SendMode::Sync);
        assert_eq!(c.client.send.cycle.0, Duration::from_millis(500));
        let client = c.client.to_builder().build().unwrap();
        assert_eq!(client.servers().collect::<Vec<_>>(), ["a:4730", "b:7003"]);
        let e = Config::parse("client:\n  send:\n    mode: sometimes\n").unwrap_err();
        assert!(e.0.contains("sometimes") || e.0.contains("mode"), "{}", e.0);
        let e = Config::parse("client:\n  server: [a]\n").unwrap_err();
        assert!(e.0.contains("server"), "{}", e.0);
    }

    #[test]
    fn shipped_config_parses_with_defaults() {
        let text = include_str!("../config.yaml");
        let c = Config::parse(text).unwrap();
        let d = ClientSection::default();
        assert_eq!(c.client.ack_timeout, d.ack_timeout);
        assert_eq!(c.client.job_timeout, d.job_timeout);
        assert_eq!(c.client.window, d.window);
        assert_eq!(c.client.busy_poll, d.busy_poll);
        assert_eq!(c.worker.busy_poll, WorkerSection::default().busy_poll);
        assert_eq!(c.server.busy_poll, ServerSection::default().busy_poll);
        assert_eq!(c.client.send.plan, d.send.plan);
        assert_eq!(c.client.send.reload, d.send.reload);
        let d = AdminSection::default();
        assert_eq!((c.admin.timeout, c.admin.interval), (d.timeout, d.interval));
        assert!(c.admin.servers.to_vec().is_empty());
        assert_eq!(c.log.level, LogLevel::Warn);
        assert!(c.worker.functions.contains_key("test1"), "the example plan's functions");
    }
}
