//! The integration tests: one binary, one module per topic.

/// Peers, server guards and polling helpers.
mod support;

/// Malformed input against the embedded server.
mod bad_input;
/// The real gearman tools against the embedded server.
mod interop;
/// Helpers of the interop and bad-input tests.
mod peers;
/// The embedded server's lifecycle, slow readers and connection limits.
mod server;
