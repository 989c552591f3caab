//! The `admin:` section of config.yaml (`gearframe admin`).

use std::time::Duration;

use serde::Deserialize;

use crate::config::DurationStr;
use crate::worker::config::ServerList;

/// The `admin:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Servers, as a list or a comma-separated string (default:
    /// `GEARMAN_SERVERS`, else 127.0.0.1:4730).
    pub servers: ServerList,
    /// Limit of each connect and reply wait.
    pub timeout: DurationStr,
    /// Refresh interval of `gearframe admin watch`.
    pub interval: DurationStr,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            servers: ServerList::default(),
            timeout: DurationStr(super::DEFAULT_TIMEOUT),
            interval: DurationStr(Duration::from_secs(1)),
        }
    }
}

impl AdminSection {
    /// A [`Cluster`](super::Cluster) of this section's servers and timeout;
    /// an empty list means `GEARMAN_SERVERS`, else 127.0.0.1:4730 (the
    /// rule of [`resolve_servers`](crate::conn::resolve_servers)).
    ///
    /// # Errors
    /// A bad entry in the list or in `GEARMAN_SERVERS`.
    pub fn to_cluster(&self) -> Result<super::Cluster, crate::conn::BadServer> {
        let list = self.servers.entries();
        let explicit = (!list.is_empty()).then_some(list.as_slice());
        let servers = crate::conn::resolve_servers(explicit, &[])?;
        Ok(super::Cluster::new(servers, self.timeout.0))
    }
}
