//! gearframe: a Gearman job framework on blocking sockets and threads.

pub mod proto;
pub mod server;
