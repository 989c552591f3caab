//! Several servers at once: every call asks all servers in parallel and
//! returns one entry per server, in the configured order.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    AdminClient, FunctionStatus, JobInfo, MaxQueue, PriorityStatus, Result, StoreStatus, WorkerInfo,
};
use crate::conn::with_default_port;

/// The result of one server.
#[derive(Debug)]
pub struct PerServer<T> {
    /// `host:port`.
    pub server: String,
    /// What the server answered, or why it did not.
    pub result: Result<T>,
}

/// A set of servers administered together.
#[derive(Debug, Clone)]
pub struct Cluster {
    servers: Vec<String>,
    timeout: Duration,
}

impl Cluster {
    /// The servers (`host[:port]`), each call limited to `timeout` per wait.
    pub fn new<I, S>(servers: I, timeout: Duration) -> Cluster
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let servers = servers.into_iter().map(|s| with_default_port(s.as_ref())).collect();
        Cluster { servers, timeout }
    }

    /// The servers, `host:port`.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// The limit of each wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `f` on a fresh connection to each server, in parallel.
    pub fn each<T, F>(&self, f: F) -> Vec<PerServer<T>>
    where
        T: Send,
        F: Fn(&mut AdminClient) -> Result<T> + Sync,
    {
        let f = &f;
        std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .servers
                .iter()
                .map(|server| {
                    let timeout = self.timeout;
                    scope.spawn(move || {
                        let mut c = AdminClient::lazy(server, timeout);
                        PerServer { server: server.clone(), result: f(&mut c) }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    }

    /// `status` of every server.
    pub fn status(&self) -> Vec<PerServer<Vec<FunctionStatus>>> {
        self.each(AdminClient::status)
    }

    /// `prioritystatus` of every server.
    pub fn priority_status(&self) -> Vec<PerServer<Vec<PriorityStatus>>> {
        self.each(AdminClient::priority_status)
    }

    /// `workers` of every server.
    pub fn workers(&self) -> Vec<PerServer<Vec<WorkerInfo>>> {
        self.each(AdminClient::workers)
    }

    /// `show jobs` of every server.
    pub fn show_jobs(&self) -> Vec<PerServer<Vec<JobInfo>>> {
        self.each(AdminClient::show_jobs)
    }

    /// `show unique jobs` of every server.
    pub fn show_unique_jobs(&self) -> Vec<PerServer<Vec<String>>> {
        self.each(AdminClient::show_unique_jobs)
    }

    /// `version` of every server.
    pub fn version(&self) -> Vec<PerServer<String>> {
        self.each(AdminClient::version)
    }

    /// `store` of every server (gearframe only).
    pub fn store(&self) -> Vec<PerServer<StoreStatus>> {
        self.each(AdminClient::store)
    }

    /// `getpid` of every server.
    pub fn getpid(&self) -> Vec<PerServer<u32>> {
        self.each(AdminClient::getpid)
    }

    /// ECHO round trip of every server.
    pub fn ping(&self) -> Vec<PerServer<Duration>> {
        self.each(AdminClient::ping)
    }

    /// `maxqueue` on every server.
    pub fn set_max_queue(&self, function: &str, limits: MaxQueue) -> Vec<PerServer<()>> {
        self.each(|c| c.set_max_queue(function, limits))
    }

    /// `cancel job` on every server (handles are server-local: expect
    /// `UNKNOWN_JOB` from all but one).
    pub fn cancel_job(&self, handle: &str) -> Vec<PerServer<()>> {
        self.each(|c| c.cancel_job(handle))
    }

    /// `create function` on every server.
    pub fn create_function(&self, name: &str) -> Vec<PerServer<()>> {
        self.each(|c| c.create_function(name))
    }

    /// `drop function` on every server.
    pub fn drop_function(&self, name: &str) -> Vec<PerServer<()>> {
        self.each(|c| c.drop_function(name))
    }
}

/// Sums `status` per function over the servers that answered, sorted by name.
pub fn sum_status(results: &[PerServer<Vec<FunctionStatus>>]) -> Vec<FunctionStatus> {
    let mut m: BTreeMap<&str, FunctionStatus> = BTreeMap::new();
    for f in results.iter().filter_map(|r| r.result.as_ref().ok()).flatten() {
        let e = m.entry(&f.function).or_insert_with(|| FunctionStatus {
            function: f.function.clone(),
            total: 0,
            running: 0,
            workers: 0,
        });
        e.total += f.total;
        e.running += f.running;
        e.workers += f.workers;
    }
    m.into_values().collect()
}

/// Sums `prioritystatus` per function over the servers that answered.
pub fn sum_priority(results: &[PerServer<Vec<PriorityStatus>>]) -> Vec<PriorityStatus> {
    let mut m: BTreeMap<&str, PriorityStatus> = BTreeMap::new();
    for f in results.iter().filter_map(|r| r.result.as_ref().ok()).flatten() {
        let e = m.entry(&f.function).or_insert_with(|| PriorityStatus {
            function: f.function.clone(),
            high: 0,
            normal: 0,
            low: 0,
            workers: 0,
        });
        e.high += f.high;
        e.normal += f.normal;
        e.low += f.low;
        e.workers += f.workers;
    }
    m.into_values().collect()
}
