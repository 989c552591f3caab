//! The integration tests: one binary, one module per topic.

/// The admin library and `gearframe admin` against both servers.
mod admin;
/// `gearframe admin` as a user runs it: job status, watch, workers, exit codes, Ctrl-C.
mod admin_cli;
/// Malformed input against the embedded server.
mod bad_input;
/// `gearframe bench` runs every scenario and reports them as JSON.
mod bench;
/// `gearframe submit` and `gearframe send` as a user runs them.
mod cli_client;
/// The command line: help, typo suggestions, defaults, config and log file errors.
mod cli_usage;
/// The client library: both servers, failover, timeouts, batches.
mod client;
/// Differential scenarios: the same conversation against gearmand and gearframe.
mod diff;
/// The persistent queue under real faults: locked database, full disk, failed dump.
mod durability;
/// Server and `send` edges: unique handles, cancel, relative plans, interrupts.
mod edges;
/// `gearframe submit`'s errors: each cause named with its server, within the limits.
mod errors;
/// Failed jobs reach gearframe's client with their reason, from every worker kind.
mod failures;
/// File descriptor limits: connections that fit are served, the rest refused at once.
mod fds;
/// `gearframe demo` and `gearframe up` as a user runs them.
mod framework;
/// gearadmin's flags on `gearframe admin`, compared with gearadmin byte for byte.
mod gearadmin_flags;
/// A 4 GiB header from a fake server against `gearframe submit` and `worker`.
mod header_memory;
/// The real gearman tools against the embedded server.
mod interop;
/// The failure matrix: every peer client through both servers against a gearframe worker.
mod matrix;
/// Memory and connection time under abuse: partial packets, slow senders, bogus headers.
mod memory;
/// Helpers of the interop and bad-input tests.
mod peers;
/// README.md's recipes, run as written.
mod readme;
/// Faults injected for real: killed workers and servers, floods, limits, restarts, fuzzing.
mod reliability;
/// The embedded server's lifecycle, slow readers and connection limits.
mod server;
/// Which servers each command and builder uses: -s, GEARMAN_SERVERS, config, default.
mod servers;
/// The shell runner with real processes.
mod shell;
/// The reliability soak: kills, malformed streams and corrupt queues, repeated.
mod soak;
/// Stopping the server: signals under load, the graceful stop.
mod stops;
/// Peers, server guards, polling helpers and a raw protocol connection.
mod support;
/// The worker pool against both servers, and `gearframe worker`.
mod worker;
/// `gearframe worker`'s messages: failed jobs at its default level, and its stop.
mod worker_cli;
