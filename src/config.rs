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
pub use crate::admin::AdminConfig;
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
    pub server: crate::server::ServerConfig,
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
    pub admin: AdminConfig,
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

/// Why a config file could not be used: the key whose value is bad, what
/// is wrong with it and what to write instead, and where the key is.
///
/// Shown as `config FILE: line L column C: KEY: REASON`, each part only
/// when it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The full path of the bad key (`server.queue`), empty when the error
    /// is not about one key (a file that cannot be read, invalid YAML).
    pub key: String,
    /// What is wrong and what to write instead.
    pub reason: String,
    /// The line of the key in the text (from 1), when it is known.
    pub line: Option<usize>,
    /// The column of the key on its line (from 1), when it is known.
    pub column: Option<usize>,
    /// The file the text came from, when it was read from one
    /// ([`Config::load`]).
    pub file: Option<std::path::PathBuf>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "config {}: ", file.display())?;
        }
        match (self.line, self.column) {
            (Some(line), Some(col)) => write!(f, "line {line} column {col}: ")?,
            (Some(line), None) => write!(f, "line {line}: ")?,
            _ => {}
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// A bad value at `key` (its full path, `server.queue`), with what is
    /// wrong and what to write instead.
    pub fn new(key: impl std::fmt::Display, reason: impl std::fmt::Display) -> ConfigError {
        ConfigError {
            key: key.to_string(),
            reason: reason.to_string(),
            line: None,
            column: None,
            file: None,
        }
    }

    /// This error with the position of its key in `text` (else of the
    /// closest parent key found, else `fallback`).
    fn located(mut self, text: &str, fallback: Option<serde_yaml::Location>) -> ConfigError {
        let path: Vec<&str> =
            if self.key.is_empty() { Vec::new() } else { self.key.split('.').collect() };
        let at = (1..=path.len())
            .rev()
            .find_map(|n| find_key(text, &path[..n]))
            .or_else(|| fallback.map(|l| (l.line(), l.column())));
        self.line = at.map(|(line, _)| line);
        self.column = at.map(|(_, col)| col);
        self
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
            ConfigError::new(
                "",
                format!("cannot read config {}: {e}; fix the path or -c", path.display()),
            )
        })?;
        Config::read(&text).map_err(|e| ConfigError { file: Some(path.to_path_buf()), ..e })
    }

    /// Parses YAML text and validates it (see [`Config::validate`]).
    ///
    /// # Errors
    /// As [`Config::parse`] and [`Config::validate`], each located in `text`.
    pub fn read(text: &str) -> Result<Config, ConfigError> {
        let cfg = Config::parse(text)?;
        cfg.validate().map_err(|e| e.located(text, None))?;
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
                return ConfigError::new(
                    "",
                    format!("{msg}; fix the YAML (indent with spaces, `key: value`)"),
                )
                .located(text, syntax.location());
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
            ConfigError::new(key.join("."), msg).located(text, inner.location())
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

    /// Checks what types cannot: function definitions and server lists.
    /// (The values with a parser of their own, such as `server.queue` and
    /// `server.admin_allow`, are checked as the file is read.)
    ///
    /// # Errors
    /// The first bad value, its key's full path and what is wrong with it
    /// (without its position: [`Config::read`] adds that).
    pub fn validate(&self) -> Result<(), ConfigError> {
        // `worker.functions.f: cwd: ...` names the key `worker.functions.f.cwd`.
        #[cfg(feature = "worker")]
        let split = |e: String| {
            let (mut key, mut msg) = (String::new(), e.as_str());
            while let Some((k, m)) = msg.split_once(": ")
                && !k.is_empty()
                && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                key = if key.is_empty() { k.to_string() } else { format!("{key}.{k}") };
                msg = m;
            }
            ConfigError::new(key, msg)
        };
        #[cfg(feature = "worker")]
        self.worker.validate().map_err(split)?;
        #[cfg(feature = "worker")]
        self.worker.servers.to_vec().map_err(|e| ConfigError::new("worker.servers", e))?;
        #[cfg(feature = "client")]
        self.client.servers.to_vec().map_err(|e| ConfigError::new("client.servers", e))?;
        #[cfg(feature = "admin")]
        self.admin.servers.to_vec().map_err(|e| ConfigError::new("admin.servers", e))?;
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

    /// The key, line and column of an error.
    fn at(e: &ConfigError) -> (&str, Option<usize>, Option<usize>) {
        (e.key.as_str(), e.line, e.column)
    }

    #[test]
    fn errors_name_the_key_and_its_line() {
        let text = "worker:\n  threads: 2\n  functions:\n    resize:\n      command: [x]\n      timeout: 15\n";
        let e = Config::parse(text).unwrap_err();
        assert_eq!(at(&e), ("worker.functions.resize.timeout", Some(6), Some(7)), "{e}");
        assert!(e.reason.starts_with("invalid duration `15`"), "{e}");
        assert!(e.reason.contains("15s"), "{e}");
        assert!(
            e.to_string().starts_with(
                "line 6 column 7: worker.functions.resize.timeout: invalid duration `15`"
            ),
            "{e}"
        );
        let e = Config::parse("server:\n  job_retries: 1\n  listn: x\n").unwrap_err();
        assert_eq!(at(&e), ("server.listn", Some(3), Some(3)), "{e}");
        assert!(e.reason.starts_with("unknown field `listn`"), "{e}");
        let e = Config::parse("client:\n  window: many\n").unwrap_err();
        assert_eq!(at(&e), ("client.window", Some(2), Some(3)), "{e}");
        assert!(e.reason.starts_with("invalid type"), "{e}");
        let e = Config::read("# servers\nadmin:\n  servers: 'a,http://b'\n").unwrap_err();
        assert_eq!(at(&e), ("admin.servers", Some(3), Some(3)), "{e}");
        assert!(e.reason.starts_with("bad server `http://b`"), "{e}");
        let e = Config::read("worker:\n  functions:\n    \"f\":\n      timeout: 5s\n").unwrap_err();
        assert_eq!(at(&e), ("worker.functions.f", Some(3), Some(5)), "{e}");
        assert!(e.reason.starts_with("set one of"), "{e}");
        let e = Config::read("worker:\n  functions:\n    f:\n      command: []\n").unwrap_err();
        assert_eq!(at(&e), ("worker.functions.f.command", Some(4), Some(7)), "{e}");
        assert!(e.reason.starts_with("give"), "{e}");
        let e = Config::read("server:\n  queue: mysql:x\n").unwrap_err();
        assert_eq!(at(&e), ("server.queue", Some(2), Some(3)), "{e}");
        assert!(e.reason.starts_with("unknown queue `mysql:x`"), "{e}");
        assert!(e.to_string().starts_with("line 2 column 3: server.queue: unknown queue"), "{e}");
        let e = Config::read("server:\n  admin_allow: [127.0.0.1, 10.0.0.0/99]\n").unwrap_err();
        assert_eq!(at(&e), ("server.admin_allow", Some(2), Some(3)), "{e}");
        assert!(e.reason.starts_with("invalid address rule `10.0.0.0/99`"), "{e}");
        let e = Config::parse("server:\n  listen: a\n   job_retries: 2\n").unwrap_err();
        assert_eq!(at(&e), ("", Some(3), Some(15)), "{e}");
        assert!(e.reason.starts_with("mapping values are not allowed"), "{e}");
        assert!(e.reason.contains("fix the YAML"), "{e}");
        let e = Config::parse("worker:\n  threads: -1\n").unwrap_err();
        assert_eq!(at(&e), ("worker.threads", Some(2), Some(3)), "{e}");
        assert!(e.reason.ends_with("expected usize; give a whole number such as 4"), "{e}");
        let e = Config::parse("worker:\n  servers: {a: 1}\n").unwrap_err();
        assert_eq!(e.key, "worker.servers", "{e}");
        assert!(e.reason.starts_with("give a list"), "{e}");
    }

    #[test]
    fn errors_of_a_file_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "server:\n  queue: mysql:x\n").unwrap();
        let e = Config::load(&path).unwrap_err();
        assert_eq!(e.file.as_deref(), Some(path.as_path()));
        assert_eq!(at(&e), ("server.queue", Some(2), Some(3)), "{e}");
        let shown =
            format!("config {}: line 2 column 3: server.queue: unknown queue", path.display());
        assert!(e.to_string().starts_with(&shown), "{e}");
        let missing = dir.path().join("none.yaml");
        let e = Config::load(&missing).unwrap_err();
        assert_eq!(at(&e), ("", None, None), "{e}");
        let shown = format!("cannot read config {}: ", missing.display());
        assert!(e.to_string().starts_with(&shown), "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("server:\n  listn: 1.2.3.4:1\n").unwrap_err();
        assert_eq!(e.key, "server.listn", "{e}");
        let e = Config::parse("sever: {}\n").unwrap_err();
        assert_eq!(e.key, "sever", "{e}");
    }

    #[test]
    fn server_section() {
        let c = Config::parse(
            "server:\n  listen: 127.0.0.1:0\n  job_retries: 3\n  write_timeout: 2s\n  busy_poll: 0\n",
        )
        .unwrap();
        let s = c.server;
        assert_eq!(s.busy_poll, Duration::ZERO);
        assert_eq!(s.listen, "127.0.0.1:0");
        assert_eq!(s.job_retries, 3);
        assert_eq!(s.write_timeout, Duration::from_secs(2));
        let c = Config::read(
            "server:\n  queue: sqlite:/tmp/q.db\n  store_queue_on_shutdown: true\n  admin_allow: [127.0.0.1, 10.0.0.0/8]\n",
        );
        if cfg!(feature = "persistent-queue") {
            let s = c.unwrap().server;
            assert_eq!(s.queue.as_deref(), Some(std::path::Path::new("/tmp/q.db")));
            assert_eq!(s.durability, crate::server::Durability::OnShutdown);
            let rules: Vec<String> = s.admin_allow.iter().map(ToString::to_string).collect();
            assert_eq!(rules, ["127.0.0.1", "10.0.0.0/8"]);
        } else {
            assert!(c.unwrap_err().reason.contains("persistent-queue"));
        }
    }

    #[test]
    fn an_empty_server_section_is_the_default_config() {
        let d = crate::server::ServerConfig::default();
        for text in ["", "server:\n", "server: {}\n", "log:\n  level: info\n"] {
            assert_eq!(Config::read(text).unwrap().server, d, "{text:?}");
        }
        // What the defaults write reads back as the defaults.
        let written = serde_yaml::to_string(&d).unwrap();
        let back: crate::server::ServerConfig = serde_yaml::from_str(&written).unwrap();
        assert_eq!(back, d, "{written}");
        let mut c = d.clone();
        c.queue = Some("/tmp/q.db".into());
        c.durability = crate::server::Durability::OnShutdown;
        c.admin_allow = vec!["::1".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let written = serde_yaml::to_string(&c).unwrap();
        assert!(written.contains("queue: sqlite:/tmp/q.db"), "{written}");
        assert!(written.contains("store_queue_on_shutdown: true"), "{written}");
        if cfg!(feature = "persistent-queue") {
            assert_eq!(serde_yaml::from_str::<crate::server::ServerConfig>(&written).unwrap(), c);
        }
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
        assert!(e.reason.contains("sometimes") || e.key.ends_with("mode"), "{e}");
        let e = Config::parse("client:\n  server: [a]\n").unwrap_err();
        assert!(e.key.contains("server"), "{e}");
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
        /// The key, line and column of the error, and its reason.
        fn err(text: &str) -> (String, Option<usize>, Option<usize>, String) {
            let e = Config::parse(text).unwrap_err();
            (e.key, e.line, e.column, e.reason)
        }
        let (key, line, col, why) = err("client:\n  window: 3\n  send:\n    plann: x.yaml\n");
        assert_eq!((key.as_str(), line, col), ("client.send.plann", Some(4), Some(5)));
        assert!(why.starts_with("unknown field `plann`"), "{why}");
        let (key, line, _, why) = err("client:\n  send:\n    cycle: soon\n");
        assert_eq!((key.as_str(), line), ("client.send.cycle", Some(3)));
        assert!(why.starts_with("invalid duration"), "{why}");
        let (key, line, col, why) = err("client:\n  send: {}\n  windw: 3\n");
        assert_eq!((key.as_str(), line, col), ("client.windw", Some(3), Some(3)));
        assert!(why.starts_with("unknown field"), "{why}");
        let text =
            "worker:\n  functions:\n    f:\n      shell: x\n      retries: 1\n      colour: red\n";
        let (key, line, col, why) = err(text);
        assert_eq!((key.as_str(), line, col), ("worker.functions.f.colour", Some(6), Some(7)));
        assert!(why.starts_with("unknown field `colour`"), "{why}");
        assert!(why.ends_with("remove it or fix its spelling"), "{why}");
        let text = "worker:\n  functions:\n    f:\n      shell: x\n      retries: many\n";
        let (key, line, _, why) = err(text);
        assert_eq!((key.as_str(), line), ("worker.functions.f.retries", Some(5)));
        assert!(why.starts_with("invalid type"), "{why}");
        let text = "worker:\n  functions:\n    f:\n      shell: x\n      stdin: pipe\n";
        let (key, line, _, why) = err(text);
        assert_eq!((key.as_str(), line), ("worker.functions.f.stdin", Some(5)));
        assert!(why.starts_with("unknown variant"), "{why}");
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
        assert_eq!(c.server, crate::server::ServerConfig::default());
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
        let d = AdminConfig::default();
        assert_eq!((c.admin.timeout, c.admin.interval), (d.timeout, d.interval));
        assert!(c.admin.servers.to_vec().unwrap().is_empty());
        assert_eq!(c.log.level, LogLevel::Warn);
        assert!(c.worker.functions.contains_key("test1"), "the example plan's functions");
    }
}
