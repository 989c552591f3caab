//! The `admin:` section of config.yaml (`gearframe admin`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ServerList;

/// Settings of the admin tool: the `admin:` section of config.yaml, and
/// the `--timeout` of `gearframe admin`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct AdminConfig {
    /// Servers, as a list or a comma-separated string (default:
    /// `GEARMAN_SERVERS`, else 127.0.0.1:4730). The command's `-s` replaces
    /// the list, by the rule of
    /// [`resolve_servers`](crate::conn::resolve_servers).
    #[serde(skip_serializing)]
    #[cfg_attr(feature = "cli", arg(skip))]
    pub servers: ServerList,
    /// Limit of each connect and reply wait, e.g. 2s.
    #[serde(with = "crate::config::duration")]
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            value_name = "DURATION",
            value_parser = crate::config::parse_duration,
            global = true
        )
    )]
    pub timeout: Duration,
    /// Refresh interval of `gearframe admin watch` (its `--interval`).
    #[serde(with = "crate::config::duration")]
    #[cfg_attr(feature = "cli", arg(skip))]
    pub interval: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            servers: ServerList::default(),
            timeout: super::DEFAULT_TIMEOUT,
            interval: Duration::from_secs(1),
        }
    }
}

impl AdminConfig {
    /// A [`Cluster`](super::Cluster) of these servers and this timeout; an
    /// empty list means `GEARMAN_SERVERS`, else 127.0.0.1:4730 (the rule of
    /// [`resolve_servers`](crate::conn::resolve_servers)).
    ///
    /// # Errors
    /// A bad entry in the list or in `GEARMAN_SERVERS`.
    pub fn to_cluster(&self) -> Result<super::Cluster, crate::conn::BadServer> {
        let list = self.servers.entries();
        let explicit = (!list.is_empty()).then_some(list.as_slice());
        let servers = crate::conn::resolve_servers(explicit, &[])?;
        Ok(super::Cluster::new(servers, self.timeout))
    }
}
