//! The integration tests: one binary, one module per topic.

/// The shell runner with real processes.
mod shell;
/// Peers, server guards and polling helpers.
mod support;
/// The worker pool against both servers, and `gearframe worker`.
mod worker;
