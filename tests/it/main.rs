//! The integration tests: one binary, one module per topic.

/// Peers, server guards and polling helpers.
mod support;
/// The embedded server's lifecycle, slow readers and connection limits.
mod server;
