//! config.yaml: the file model, its defaults, and validation with errors
//! that name the key to fix.
//!
//! Unknown keys are errors. Durations are written with a unit: `500ms`,
//! `15s`, `2m`, `1h`. The section of a component left out of the build
//! (a cargo feature that is off) is accepted and not read.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[cfg(feature = "admin")]
pub use crate::admin::AdminSection;
#[cfg(feature = "client")]
pub use crate::client::ClientConfig;
#[cfg(feature = "worker")]
pub use crate::worker::config::{FunctionConfig, WorkerConfig};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The `server:` section.
    #[cfg(feature = "server")]
    pub server: ServerSection,
    #[cfg(not(feature = "server"))]
    #[serde(rename = "server")]
    _server: serde::de::IgnoredAny,
    /// The `worker:` section.
    #[cfg(feature = "worker")]
    #[serde(default)]
    pub worker: WorkerConfig,
    #[cfg(not(feature = "worker"))]
    #[serde(rename = "worker")]
    _worker: serde::de::IgnoredAny,
    /// The `client:` section but `send:`.
    #[cfg(feature = "client")]
    #[serde(skip)]
    pub client: ClientConfig,
    /// The `client.send:` subsection.
    #[cfg(feature = "client")]
    #[serde(skip)]
    pub send: SendSection,
    /// The `client:` section as read, until [`Config::parse`] moves it to
    /// `client` and `send`.
    #[cfg(feature = "client")]
    #[serde(rename = "client", deserialize_with = "client_and_send")]
    client_section: Option<(ClientConfig, SendSection)>,
    #[cfg(not(feature = "client"))]
    #[serde(rename = "client")]
    _client: serde::de::IgnoredAny,
    /// The `admin:` section.
    #[cfg(feature = "admin")]
    #[serde(default)]
    pub admin: AdminSection,
    #[cfg(not(feature = "admin"))]
    #[serde(rename = "admin")]
    _admin: serde::de::IgnoredAny,
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
#[cfg(feature = "server")]
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
    /// Job handle prefix (default `H:<hostname>:<port>:<start time>`).
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

/// A server list in the file: `[a:4730, b]` or `"a:4730,b"`, each entry as
/// [`parse_server_list`](crate::conn::parse_server_list) reads it. An empty
/// list or string in the file is [`ServerList::None`]: `GEARMAN_SERVERS`,
/// else 127.0.0.1:4730.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ServerList {
    /// None given.
    #[default]
    None,
    /// A YAML list.
    List(Vec<String>),
    /// A comma-separated string.
    Text(String),
}

impl<'de> Deserialize<'de> for ServerList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Named as the type, for the message of a value that is neither.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum ServerList {
            List(Vec<String>),
            Text(String),
        }
        Ok(match ServerList::deserialize(d)? {
            ServerList::List(v) if v.is_empty() => Self::None,
            ServerList::Text(s) if s.trim().is_empty() => Self::None,
            ServerList::List(v) => Self::List(v),
            ServerList::Text(s) => Self::Text(s),
        })
    }
}

impl Serialize for ServerList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ServerList::None => Vec::<String>::new().serialize(s),
            ServerList::List(v) => v.serialize(s),
            ServerList::Text(t) => t.serialize(s),
        }
    }
}

impl ServerList {
    /// The entries as written.
    pub fn entries(&self) -> Vec<String> {
        match self {
            ServerList::None => Vec::new(),
            ServerList::List(v) => v.clone(),
            ServerList::Text(s) => vec![s.clone()],
        }
    }

    /// The servers, each with its port.
    ///
    /// # Errors
    /// An entry that is not `HOST[:PORT]`.
    pub fn to_vec(&self) -> Result<Vec<String>, crate::conn::BadServer> {
        crate::conn::parse_server_list(self.entries())
    }
}

/// Parses `sqlite:PATH`.
#[cfg(feature = "server")]
///
/// # Errors
/// Any other form, naming the value.
pub fn parse_queue(s: &str) -> Result<std::path::PathBuf, String> {
    match s.split_once(':') {
        Some(("sqlite", path)) if !path.is_empty() && cfg!(feature = "persistent-queue") => {
            Ok(path.into())
        }
        Some(("sqlite", path)) if !path.is_empty() => Err(format!(
            "queue `{s}` needs the persistent-queue feature, which this build of gearframe \
             lacks: rebuild with `--features persistent-queue` or remove the queue"
        )),
        _ => Err(format!("unknown queue `{s}`: write sqlite:PATH")),
    }
}

#[cfg(feature = "server")]
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

#[cfg(feature = "server")]
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

/// How `gearframe send` submits a plan.
#[cfg(feature = "client")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SendMode {
    /// Background jobs; done when every job is accepted.
    #[default]
    Async,
    /// Foreground jobs; done when every job has its result.
    Sync,
}

#[cfg(feature = "client")]
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

/// The `client.send:` subsection: the settings of `gearframe send`, each
/// also an option of that command.
#[cfg(feature = "client")]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct SendSection {
    /// The plan: a YAML file, or an executable printing the jobs as JSON.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub plan: std::path::PathBuf,
    /// async: background jobs, done when every job is accepted; sync:
    /// foreground jobs, one result line per job.
    #[cfg_attr(feature = "cli", arg(short = 'm', long, value_name = "MODE"))]
    pub mode: SendMode,
    /// Send the plan again every interval, e.g. 500ms; 0 sends it once.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)
    )]
    #[serde(with = "crate::config::duration")]
    pub cycle: Duration,
    /// Read the plan again at most this often, e.g. 1m.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)
    )]
    #[serde(with = "crate::config::duration")]
    pub reload: Duration,
}

#[cfg(feature = "client")]
impl Default for SendSection {
    fn default() -> Self {
        SendSection {
            plan: "plugin/eg.yaml".into(),
            mode: SendMode::Async,
            cycle: Duration::ZERO,
            reload: Duration::from_secs(60),
        }
    }
}

/// The `client:` section: the [`ClientConfig`] keys, and `send:`, which
/// is read into a [`SendSection`].
#[cfg(feature = "client")]
fn client_and_send<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<(ClientConfig, SendSection)>, D::Error> {
    struct Section;
    impl<'de> serde::de::Visitor<'de> for Section {
        type Value = (ClientConfig, SendSection);
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let mut keys = WithoutSend { map, send: None };
            let client =
                ClientConfig::deserialize(serde::de::value::MapAccessDeserializer::new(&mut keys))?;
            Ok((client, keys.send.unwrap_or_default()))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    }
    /// The keys of the section but `send`, whose value it keeps.
    struct WithoutSend<A> {
        map: A,
        send: Option<SendSection>,
    }
    impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for &mut WithoutSend<A> {
        type Error = A::Error;
        fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, A::Error> {
            use serde::de::IntoDeserializer;
            while let Some(key) = self.map.next_key::<String>()? {
                if key == "send" {
                    self.send = Some(self.map.next_value()?);
                    continue;
                }
                return seed.deserialize(key.into_deserializer()).map(Some);
            }
            Ok(None)
        }
        fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, A::Error> {
            self.map.next_value_seed(seed)
        }
    }
    d.deserialize_any(Section).map(Some)
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

/// `#[serde(with = "crate::config::duration")]`: a [`Duration`] written
/// with a unit in the file (`500ms`, `15s`, `2m`, `1h`), read by
/// [`parse_duration`].
pub mod duration {
    use std::time::Duration;

    use serde::Deserialize;

    /// Reads one duration.
    ///
    /// # Errors
    /// Not a string, or not a duration [`parse_duration`](super::parse_duration) reads.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = Written::deserialize(d)?.0;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    /// A duration as written: a string, or a bare number (which only `0`
    /// is, without a unit) where the file's values were read ahead.
    struct Written(String);

    impl<'de> Deserialize<'de> for Written {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Text;
            impl serde::de::Visitor<'_> for Text {
                type Value = Written;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a duration with a unit")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Written, E> {
                    Ok(Written(v.to_string()))
                }
                fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Written, E> {
                    Ok(Written(v.to_string()))
                }
                fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Written, E> {
                    Ok(Written(v.to_string()))
                }
                fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Written, E> {
                    Ok(Written(v.to_string()))
                }
            }
            d.deserialize_any(Text)
        }
    }

    /// Writes one duration as [`format_duration`](super::format_duration) does.
    ///
    /// # Errors
    /// Those of the serializer.
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    /// `#[serde(with = "crate::config::duration::option")]`: an optional
    /// duration.
    pub mod option {
        use std::time::Duration;

        use serde::Deserialize;

        /// Reads one optional duration.
        ///
        /// # Errors
        /// As [`deserialize`](super::deserialize).
        pub fn deserialize<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            match Option::<super::Written>::deserialize(d)? {
                Some(s) => {
                    super::super::parse_duration(&s.0).map(Some).map_err(serde::de::Error::custom)
                }
                None => Ok(None),
            }
        }

        /// Writes one optional duration.
        ///
        /// # Errors
        /// Those of the serializer.
        pub fn serialize<S: serde::Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&super::super::format_duration(*d)),
                None => s.serialize_none(),
            }
        }
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

/// Writes a duration the way [`parse_duration`] reads it (`0`, `100us`,
/// `500ms`, `15s`, `2m`, `1h`).
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    match us {
        0 => "0".into(),
        _ if us % 3_600_000_000 == 0 => format!("{}h", us / 3_600_000_000),
        _ if us % 60_000_000 == 0 => format!("{}m", us / 60_000_000),
        _ if us % 1_000_000 == 0 => format!("{}s", us / 1_000_000),
        _ if us % 1000 == 0 => format!("{}ms", us / 1000),
        _ => format!("{us}us"),
    }
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

impl ConfigError {
    /// A bad value at `key` (its full path, `server.queue`), with what is
    /// wrong and what to write instead.
    pub fn new(key: impl std::fmt::Display, reason: impl std::fmt::Display) -> ConfigError {
        ConfigError(format!("{key}: {reason}"))
    }
}

impl Config {
    /// Reads and validates a file.
    ///
    /// # Errors
    /// The file cannot be read, is not valid YAML, has an unknown key or a
    /// bad value; the message names the file, the line and column of the
    /// key, its full path and what to write.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!("cannot read config {}: {e}; fix the path or -c", path.display()))
        })?;
        Config::read(&text).map_err(|e| ConfigError(format!("config {}: {}", path.display(), e.0)))
    }

    /// Parses YAML text and validates it (see [`Config::validate`]).
    ///
    /// # Errors
    /// As [`Config::parse`] and [`Config::validate`], each located in `text`.
    pub fn read(text: &str) -> Result<Config, ConfigError> {
        let cfg = Config::parse(text)?;
        cfg.validate().map_err(|(key, msg)| ConfigError(located(text, &key, None, &msg)))?;
        Ok(cfg)
    }

    /// Parses YAML text, without [`Config::validate`].
    ///
    /// # Errors
    /// Invalid YAML, an unknown key, or a bad value, naming the line and
    /// column of the key and its full path (`worker.functions.f.timeout`).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let de = serde_yaml::Deserializer::from_str(text);
        let read = serde_path_to_error::deserialize(de).map(Config::split_client);
        read.map_err(|e| {
            // Not YAML at all: the parser's position is the one to show.
            if let Err(syntax) = serde_yaml::from_str::<serde_yaml::Value>(text) {
                let mut msg = syntax.to_string();
                if let Some(loc) = syntax.location() {
                    let at = format!(" at line {} column {}", loc.line(), loc.column());
                    msg = msg.replacen(&at, "", 1);
                }
                return ConfigError(located(
                    text,
                    "",
                    syntax.location(),
                    &format!("{msg}; fix the YAML (indent with spaces, `key: value`)"),
                ));
            }
            let mut key: Vec<String> = e
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                    _ => None,
                })
                .collect();
            let inner = e.inner();
            let mut msg = inner.to_string();
            if let Some(loc) = inner.location() {
                let at = format!(" at line {} column {}", loc.line(), loc.column());
                if let Some(m) = msg.strip_suffix(&at) {
                    msg = m.to_string();
                }
            }
            // serde_yaml starts with the path it knows, a prefix of ours;
            // a part read from a flattened entry starts with its own keys.
            while let Some((head, rest)) = msg.split_once(": ")
                && !head.is_empty()
                && head.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                if !key.join(".").starts_with(head) {
                    key.extend(head.split('.').map(str::to_string));
                }
                msg = rest.to_string();
            }
            if let Some(field) = msg.strip_prefix("unknown field `").and_then(|r| r.split('`').next())
            {
                if key.last().is_none_or(|k| k != field) {
                    key.push(field.to_string());
                }
                msg = format!("{msg}; remove it or fix its spelling");
            }
            if let Some(hint) = type_hint(&msg) {
                msg = format!("{msg}; {hint}");
            }
            if msg.contains("untagged enum ServerList") {
                msg = "give a list such as [127.0.0.1:4730, b] or a string such as \"127.0.0.1:4730,b\"".into();
            }
            ConfigError(located(text, &key.join("."), inner.location(), &msg))
        })
    }

    /// Moves the `client:` section as read to `client` and `send`.
    #[cfg(feature = "client")]
    fn split_client(mut self) -> Config {
        if let Some((client, send)) = self.client_section.take() {
            self.client = client;
            self.send = send;
        }
        self
    }

    #[cfg(not(feature = "client"))]
    fn split_client(self) -> Config {
        self
    }

    /// Checks what types cannot: function definitions, server lists,
    /// `server.queue` and `server.admin_allow`.
    ///
    /// # Errors
    /// The full key path of the first bad value and what is wrong with it.
    pub fn validate(&self) -> Result<(), (String, String)> {
        // `worker.functions.f: cwd: ...` names the key `worker.functions.f.cwd`.
        #[cfg(any(feature = "worker", feature = "server"))]
        let split = |e: String| {
            let (mut key, mut msg) = (String::new(), e.as_str());
            while let Some((k, m)) = msg.split_once(": ")
                && !k.is_empty()
                && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                key = if key.is_empty() { k.to_string() } else { format!("{key}.{k}") };
                msg = m;
            }
            (key, msg.to_string())
        };
        #[cfg(feature = "worker")]
        self.worker.validate().map_err(split)?;
        #[cfg(feature = "server")]
        self.server.to_server_config().map_err(|e| split(e.0))?;
        #[cfg(feature = "worker")]
        self.worker.servers.to_vec().map_err(|e| ("worker.servers".into(), e.to_string()))?;
        #[cfg(feature = "client")]
        self.client.servers.to_vec().map_err(|e| ("client.servers".into(), e.to_string()))?;
        #[cfg(feature = "admin")]
        self.admin.servers.to_vec().map_err(|e| ("admin.servers".into(), e.to_string()))?;
        Ok(())
    }
}

/// What to write instead, for serde's "expected ..." messages.
fn type_hint(msg: &str) -> Option<&'static str> {
    let expected = msg.rsplit("expected ").next()?;
    Some(match expected {
        "usize" | "u64" | "u32" | "u16" | "u8" => "give a whole number such as 4",
        "a boolean" => "give true or false",
        "a sequence" => "give a list such as [a, b]",
        "a string" => "give a string (quote it if it looks like a number or a list)",
        e if e.starts_with("struct ") || e.starts_with("a map") => {
            "give a mapping of `key: value` lines"
        }
        _ => return None,
    })
}

/// `line L column C: KEY: MSG`, with the position of `key` in `text` (else
/// of its closest parent found, else `fallback`).
fn located(text: &str, key: &str, fallback: Option<serde_yaml::Location>, msg: &str) -> String {
    let path: Vec<&str> = if key.is_empty() { Vec::new() } else { key.split('.').collect() };
    let at = (1..=path.len())
        .rev()
        .find_map(|n| find_key(text, &path[..n]))
        .or_else(|| fallback.map(|l| (l.line(), l.column())));
    let key = if key.is_empty() { String::new() } else { format!("{key}: ") };
    match at {
        Some((line, col)) => format!("line {line} column {col}: {key}{msg}"),
        None => format!("{key}{msg}"),
    }
}

/// The line and column (from 1) of the block-mapping key at `path`.
fn find_key(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') || body.starts_with("- ") {
            continue;
        }
        let indent = line.len() - body.len();
        let key = match body.chars().next() {
            Some(q @ ('"' | '\'')) => body[1..].split(q).next().map(str::to_string),
            _ => body
                .find(':')
                .filter(|&n| body[n + 1..].is_empty() || body[n + 1..].starts_with([' ', '\t']))
                .map(|n| body[..n].trim_end().to_string()),
        };
        let Some(key) = key else { continue };
        while stack.last().is_some_and(|(ind, _)| *ind >= indent) {
            stack.pop();
        }
        stack.push((indent, key));
        if stack.len() == path.len() && stack.iter().zip(path).all(|((_, k), p)| k == p) {
            return Some((i + 1, indent + 1));
        }
    }
    None
}

#[cfg(all(test, feature = "admin", feature = "server"))]
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
        for d in ["0", "100us", "500ms", "15s", "2m", "1h", "90s"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn errors_name_the_key_and_its_line() {
        let text = "worker:\n  threads: 2\n  functions:\n    resize:\n      command: [x]\n      timeout: 15\n";
        let e = Config::parse(text).unwrap_err().0;
        assert!(
            e.starts_with(
                "line 6 column 7: worker.functions.resize.timeout: invalid duration `15`"
            ),
            "{e}"
        );
        assert!(e.contains("15s"), "{e}");
        let e = Config::parse("server:\n  job_retries: 1\n  listn: x\n").unwrap_err().0;
        assert!(e.starts_with("line 3 column 3: server.listn: unknown field `listn`"), "{e}");
        let e = Config::parse("client:\n  window: many\n").unwrap_err().0;
        assert!(e.starts_with("line 2 column 3: client.window: invalid type"), "{e}");
        let e = Config::read("# servers\nadmin:\n  servers: 'a,http://b'\n").unwrap_err().0;
        assert!(e.starts_with("line 3 column 3: admin.servers: bad server `http://b`"), "{e}");
        let e =
            Config::read("worker:\n  functions:\n    \"f\":\n      timeout: 5s\n").unwrap_err().0;
        assert!(e.starts_with("line 3 column 5: worker.functions.f: set one of"), "{e}");
        let e = Config::read("worker:\n  functions:\n    f:\n      command: []\n").unwrap_err().0;
        assert!(e.starts_with("line 4 column 7: worker.functions.f.command: give"), "{e}");
        let e = Config::read("server:\n  queue: mysql:x\n").unwrap_err().0;
        assert!(e.starts_with("line 2 column 3: server.queue: unknown queue"), "{e}");
        let e = Config::parse("server:\n  listen: a\n   job_retries: 2\n").unwrap_err().0;
        assert!(e.starts_with("line 3 column 15: mapping values are not allowed"), "{e}");
        assert!(e.contains("fix the YAML"), "{e}");
        let e = Config::parse("worker:\n  threads: -1\n").unwrap_err().0;
        assert!(e.ends_with("expected usize; give a whole number such as 4"), "{e}");
        let e = Config::parse("worker:\n  servers: {a: 1}\n").unwrap_err().0;
        assert!(e.contains("worker.servers: give a list"), "{e}");
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
        assert_eq!(c.client.servers.to_vec().unwrap(), ["a:4730", "b:7003"]);
        let text = Config::parse("client:\n  servers: a, b:7003\n").unwrap();
        assert_eq!(text.client.servers.to_vec().unwrap(), ["a:4730", "b:7003"]);
        assert_eq!(c.client.ack_timeout, Duration::from_secs(2));
        assert_eq!(c.send.mode, SendMode::Sync);
        assert_eq!(c.send.cycle, Duration::from_millis(500));
        let client = crate::client::Client::with_config(c.client.clone()).unwrap();
        assert_eq!(client.servers().collect::<Vec<_>>(), ["a:4730", "b:7003"]);
        let e = Config::parse("client:\n  send:\n    mode: sometimes\n").unwrap_err();
        assert!(e.0.contains("sometimes") || e.0.contains("mode"), "{}", e.0);
        let e = Config::parse("client:\n  server: [a]\n").unwrap_err();
        assert!(e.0.contains("server"), "{}", e.0);
    }

    #[test]
    fn one_default_per_type() {
        for text in ["", "client:\n", "client: {}\nworker: {}\n"] {
            let c = Config::parse(text).unwrap();
            assert_eq!(c.client, ClientConfig::default(), "{text:?}");
            assert_eq!(c.send, SendSection::default(), "{text:?}");
            assert_eq!(c.worker, WorkerConfig::default(), "{text:?}");
        }
        let client = crate::client::Client::builder().servers(["a"]).build().unwrap();
        let want =
            ClientConfig { servers: ServerList::List(vec!["a".into()]), ..Default::default() };
        assert_eq!(client.config(), &want);
        assert_eq!(
            crate::client::ClientBuilder::default()
                .config(ClientConfig::default())
                .build()
                .unwrap()
                .config()
                .window,
            1024
        );
    }

    #[test]
    fn unknown_keys_under_send_and_functions_are_named_with_their_path() {
        let e = Config::parse("client:\n  window: 3\n  send:\n    plann: x.yaml\n").unwrap_err().0;
        assert!(e.starts_with("line 4 column 5: client.send.plann: unknown field `plann`"), "{e}");
        let e = Config::parse("client:\n  send:\n    cycle: soon\n").unwrap_err().0;
        assert!(e.starts_with("line 3 column 5: client.send.cycle: invalid duration"), "{e}");
        let e = Config::parse("client:\n  send: {}\n  windw: 3\n").unwrap_err().0;
        assert!(e.starts_with("line 3 column 3: client.windw: unknown field"), "{e}");
        let text =
            "worker:\n  functions:\n    f:\n      shell: x\n      retries: 1\n      colour: red\n";
        let e = Config::parse(text).unwrap_err().0;
        assert!(
            e.starts_with("line 6 column 7: worker.functions.f.colour: unknown field `colour`"),
            "{e}"
        );
        assert!(e.ends_with("remove it or fix its spelling"), "{e}");
        let text = "worker:\n  functions:\n    f:\n      shell: x\n      retries: many\n";
        let e = Config::parse(text).unwrap_err().0;
        assert!(e.starts_with("line 5 column 7: worker.functions.f.retries: invalid type"), "{e}");
        let text = "worker:\n  functions:\n    f:\n      shell: x\n      stdin: pipe\n";
        let e = Config::parse(text).unwrap_err().0;
        assert!(e.starts_with("line 5 column 7: worker.functions.f.stdin: unknown variant"), "{e}");
    }

    #[test]
    fn shipped_config_parses_with_defaults() {
        let text = include_str!("../config.yaml");
        let c = Config::read(text).unwrap();
        let d = ClientConfig::default();
        assert_eq!(c.client.ack_timeout, d.ack_timeout);
        assert_eq!(c.client.job_timeout, d.job_timeout);
        assert_eq!(c.client.window, d.window);
        assert_eq!(c.client.busy_poll, d.busy_poll);
        assert_eq!(c.worker.busy_poll, WorkerConfig::default().busy_poll);
        assert_eq!(c.client.max_packet_size, d.max_packet_size);
        assert_eq!(c.worker.max_packet_size, WorkerConfig::default().max_packet_size);
        assert_eq!(c.server.busy_poll, ServerSection::default().busy_poll);
        assert_eq!(c.send, SendSection::default());
        assert_eq!(c.client, ClientConfig::default(), "config.yaml shows the defaults");
        let mut worker = c.worker.clone();
        worker.functions.clear();
        assert_eq!(worker, WorkerConfig::default(), "config.yaml shows the defaults");
        let wc = &c.worker.functions["wc"];
        let want = FunctionConfig::command(
            crate::worker::shell::ShellCommand::argv(["wc", "-l"])
                .timeout(Some(Duration::from_secs(3600))),
        );
        assert_eq!(wc, &want, "the defaults of a function");
        let d = AdminSection::default();
        assert_eq!((c.admin.timeout, c.admin.interval), (d.timeout, d.interval));
        assert!(c.admin.servers.to_vec().unwrap().is_empty());
        assert_eq!(c.log.level, LogLevel::Warn);
        assert!(c.worker.functions.contains_key("test1"), "the example plan's functions");
    }
}
