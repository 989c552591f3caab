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
