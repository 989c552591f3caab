//! gearframe: a Gearman job framework on blocking sockets and threads.
//!
//! - [`proto`]: the binary and text protocol as pure functions over bytes.
//! - [`server`]: an embedded job server, a drop-in for gearmand.
//! - [`conn`]: a blocking framed connection, shared by client, worker and admin.
//! - [`worker`]: a pool of worker slots, and the shell runner for command jobs.
//! - [`client`]: a blocking client with failover and pipelined batches.
//! - [`admin`]: the admin tool: typed admin commands, several servers at once,
//!   clearing queues and stopping workers.
//! - [`config`]: the config.yaml model.
//!
//! The library logs through the `log` facade and never installs a logger.
//!
//! Each component is a cargo feature (`client`, `worker`, `admin`,
//! `server`, `persistent-queue`, and `cli` for the `gearframe` command),
//! all on by default; [`proto`], [`conn`] and [`config`] are always there.

#![warn(missing_docs, unreachable_pub)]

#[cfg(feature = "admin")]
pub mod admin;
pub mod busy_poll;
#[cfg(feature = "client")]
pub mod client;
pub mod config;
pub mod conn;
pub mod proto;
#[cfg(feature = "server")]
pub mod server;
mod util;
pub use util::panic_message;
#[cfg(feature = "worker")]
pub mod worker;

/// The Rust examples of README.md, compiled and run as doc tests.
#[cfg(all(doctest, feature = "admin", feature = "persistent-queue"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
