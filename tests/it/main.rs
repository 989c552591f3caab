//! The integration tests: one binary, one module per topic.

/// Differential scenarios: the same conversation against gearmand and gearframe.
mod diff;
/// The embedded server's lifecycle, slow readers and connection limits.
mod server;
/// Peers, server guards, polling helpers and a raw protocol connection.
mod support;
