//! [`ClientConfig`]: every setting of a [`Client`](super::Client), also the
//! `client:` section of config.yaml.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ServerList;

/// The settings of a [`Client`](super::Client): what
/// [`ClientBuilder`](super::ClientBuilder) sets, and the `client:` section
/// of config.yaml. Durations are written with a unit in the file (`500ms`,
/// `15s`, `1h`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct ClientConfig {
    /// Job servers, each `host[:port]` or a comma-separated list of them
    /// (see [`parse_server_list`](crate::conn::parse_server_list)). None:
    /// `GEARMAN_SERVERS`, else 127.0.0.1:4730.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub servers: ServerList,
    /// Limit of one TCP connect.
    #[cfg_attr(feature = "cli", arg(skip))]
    #[serde(with = "crate::config::duration")]
    pub connect_timeout: Duration,
    /// Limit of the wait for JOB_CREATED after a submission, and of status,
    /// echo and option replies and of a blocked write.
    #[cfg_attr(feature = "cli", arg(skip))]
    #[serde(with = "crate::config::duration")]
    pub ack_timeout: Duration,
    /// How long a job keeps being tried: from the start of the call for a
    /// job no server accepted yet, from the break for an accepted job whose
    /// connection broke; every server is tried at least once.
    #[cfg_attr(feature = "cli", arg(skip))]
    #[serde(with = "crate::config::duration")]
    pub retry_timeout: Duration,
    /// Overall limit of each job, from the call to its outcome (a job's own
    /// timeout overrides it), e.g. 30s.
    #[cfg_attr(
        feature = "cli",
        arg(long = "timeout", value_name = "DURATION", value_parser = crate::config::parse_duration)
    )]
    #[serde(with = "crate::config::duration")]
    pub job_timeout: Duration,
    /// Most jobs in flight per server connection in a batch (at least 1).
    #[cfg_attr(feature = "cli", arg(skip))]
    pub window: usize,
    /// The first reconnect back-off after a failure; it doubles with each
    /// failure in a row up to `backoff_max`, each wait jittered down to half.
    #[cfg_attr(feature = "cli", arg(skip))]
    #[serde(with = "crate::config::duration")]
    pub backoff_min: Duration,
    /// The longest reconnect back-off (at least `backoff_min`).
    #[cfg_attr(feature = "cli", arg(skip))]
    #[serde(with = "crate::config::duration")]
    pub backoff_max: Duration,
    /// Ask every connection for WORK_EXCEPTION packets (`OPTION_REQ
    /// exceptions`), so that a failed job's outcome carries the worker's
    /// reason; without it servers turn exceptions into WORK_FAIL.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub exceptions: bool,
    /// Name of every connection (SET_CLIENT_ID), as shown by the admin
    /// `workers` command.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub client_id: Option<String>,
    /// How long a connection polls for a reply before its read blocks
    /// (zero never polls); see [`crate::busy_poll`].
    #[cfg_attr(feature = "cli", arg(skip))]
    #[serde(with = "crate::config::duration")]
    pub busy_poll: Duration,
    /// Largest packet body in bytes, sent or received: a larger job is
    /// refused before it is sent (ARGUMENT_TOO_LARGE), a server's packet
    /// declaring more closes its connection.
    #[cfg_attr(feature = "cli", arg(long, value_name = "BYTES"))]
    pub max_packet_size: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            servers: ServerList::None,
            connect_timeout: Duration::from_secs(3),
            ack_timeout: Duration::from_secs(10),
            retry_timeout: Duration::from_secs(30),
            job_timeout: Duration::from_secs(3600),
            window: 1024,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            exceptions: true,
            client_id: None,
            busy_poll: crate::busy_poll::DEFAULT_BUSY_POLL,
            max_packet_size: crate::proto::DEFAULT_MAX_BODY,
        }
    }
}
