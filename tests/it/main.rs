//! The integration tests: one binary, one module per topic.

/// The client library: both servers, failover, timeouts, batches.
mod client;
/// Peers, server guards and polling helpers.
mod support;
