//! The integration tests: one binary, one module per topic.

/// `gearframe submit` and `gearframe send` as a user runs them.
mod cli_client;
/// The client library: both servers, failover, timeouts, batches.
mod client;
/// Peers, server guards and polling helpers.
mod support;
