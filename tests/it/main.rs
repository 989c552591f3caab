//! The integration tests: one binary, one module per topic.

/// Peers, server guards, polling helpers and a raw protocol connection.
mod support;
/// The embedded server's lifecycle, slow readers and connection limits.
mod server;
/// Differential scenarios: the same conversation against gearmand and gearframe.
mod diff;
