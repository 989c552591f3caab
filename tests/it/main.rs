//! The integration tests: one binary, one module per topic.

/// Peers, server guards and polling helpers.
mod support;
