//! Admin text commands: replies rendered byte for byte as gearmand renders
//! them (see the protocol reference, section 3).
//!
//! gearframe's own commands (gearmand answers them with
//! `ERR UNKNOWN_COMMAND`):
//! - `clear function NAME`: `OK N`, the jobs removed.
//! - `store`: the persistent queue, one line then `.`:
//!   `memory` without one, else `sqlite PATH DURABILITY ok rows=N` or
//!   `sqlite PATH DURABILITY failing rows=N since=UNIX error=TEXT`, where
//!   DURABILITY is `sync` or `on-shutdown`, N the rows in the table after the
//!   last commit, UNIX the time the failure started and TEXT its cause (to
//!   the end of the line).
//! - `stopping`: `OK running`, or `OK graceful jobs=N` while a graceful stop
//!   waits for the N jobs the server still holds.

use std::io::Write;

use super::state::{ConnId, Control, Owner, State};
use crate::proto::admin::{AdminRequest, is_listable_name, parse_request};

/// Refusal of a command that changes state, from a peer outside `admin_allow`.
const DENIED_CHANGE: &[u8] =
    b"ERR PERMISSION_DENIED this+address+may+not+change+the+server+state\r\n";
/// Refusal of a listing of jobs or connections, from a peer outside `admin_allow`.
const DENIED_LISTING: &[u8] =
    b"ERR PERMISSION_DENIED this+address+may+not+list+jobs+or+connections\r\n";
/// Refusal of a function name holding a control character (see
/// [`is_listable_name`]); gearmand accepts such names.
const INVALID_FUNCTION_NAME_LINE: &[u8] =
    b"ERR INVALID_FUNCTION_NAME Function+name+holds+a+control+character;+use+printable+characters\r\n";

impl State {
    /// Applies one admin line and queues its reply.
    pub(crate) fn admin(&mut self, conn: ConnId, line: &[u8]) -> Control {
        let req = parse_request(line);
        log::debug!("conn={conn} admin {:?}", String::from_utf8_lossy(line));
        let mut out = Vec::new();
        if let Some(denied) = self.admin_denied(conn, &req) {
            log::warn!("conn={conn} admin command refused by admin_allow");
            self.send_raw(conn, denied);
            return Control::Continue;
        }
        if req.function().is_some_and(|name| !is_listable_name(name)) {
            self.send_raw(conn, INVALID_FUNCTION_NAME_LINE);
            return Control::Continue;
        }
        match req {
            AdminRequest::TooManyTokens => return Control::Close,
            AdminRequest::Invalid(reply) => out = reply,
            AdminRequest::Workers => self.render_workers(&mut out),
            AdminRequest::Status => self.render_status(&mut out),
            AdminRequest::PriorityStatus => self.render_priority_status(&mut out),
            AdminRequest::ShowJobs => self.render_jobs(&mut out),
            AdminRequest::ShowUniqueJobs => self.render_unique_jobs(&mut out),
            AdminRequest::GetPid => {
                let _ = writeln!(out, "OK {}", std::process::id());
            }
            AdminRequest::Verbose => {
                let _ = writeln!(out, "OK {}", self.verbose);
            }
            AdminRequest::Version => {
                let _ = writeln!(out, "OK {}", self.version);
            }
            AdminRequest::Store => self.render_store(&mut out),
            AdminRequest::Stopping => {
                if self.lifecycle.graceful() {
                    let _ = write!(out, "OK graceful jobs={}\r\n", self.jobs.len());
                } else {
                    out.extend_from_slice(b"OK running\r\n");
                }
            }
            AdminRequest::MaxQueue { function, limits } => {
                self.set_max_queue(function, limits);
                out.extend_from_slice(b"OK\r\n");
            }
            AdminRequest::CancelJob { handle } => {
                out.extend_from_slice(if self.cancel(handle) {
                    b"OK\r\n"
                } else {
                    b"ERR UNKNOWN_JOB\r\n"
                });
            }
            AdminRequest::CreateFunction { name } => {
                self.function_id(name);
                out.extend_from_slice(b"OK\r\n");
            }
            AdminRequest::ClearFunction { name } => match self.clear_function(name) {
                Some(n) => {
                    let _ = write!(out, "OK {n}\r\n");
                }
                None => out.extend_from_slice(b"ERR UNKNOWN_FUNCTION Function+not+found\r\n"),
            },
            AdminRequest::DropFunction { name } => match self.drop_function(name) {
                Ok(()) => out.extend_from_slice(b"OK\r\n"),
                Err(e) => out.extend_from_slice(e.as_bytes()),
            },
            AdminRequest::Shutdown { graceful } => {
                if self.conns.get(&conn).is_some_and(|c| c.loopback) {
                    log::info!(
                        "shutdown{} requested by conn={conn}",
                        if graceful { " graceful" } else { "" }
                    );
                    self.request_stop(graceful);
                    out.extend_from_slice(b"OK\r\n");
                } else {
                    out.extend_from_slice(b"ERR PERMISSION_DENIED shutdown+is+only+accepted+from+a+loopback+address\r\n");
                }
            }
        }
        self.send_raw(conn, &out);
        Control::Continue
    }

    /// The refusal of a request that `admin_allow` keeps from this peer.
    ///
    /// A peer outside a non-empty `admin_allow` may not change state
    /// (`maxqueue`, `cancel job`, `create function`, `drop function`,
    /// `clear function`, `shutdown`) nor list jobs or connections (`show
    /// jobs`, `show unique jobs`, `workers`): a unique id read there lets a
    /// peer join another client's job and read its result. `status`,
    /// `prioritystatus`, `version`, `getpid` and `verbose` stay open to
    /// every peer, for dashboards and health checks.
    fn admin_denied(&self, conn: ConnId, req: &AdminRequest<'_>) -> Option<&'static [u8]> {
        let denied = match req {
            AdminRequest::MaxQueue { .. }
            | AdminRequest::CancelJob { .. }
            | AdminRequest::CreateFunction { .. }
            | AdminRequest::DropFunction { .. }
            | AdminRequest::ClearFunction { .. }
            | AdminRequest::Shutdown { .. } => DENIED_CHANGE,
            AdminRequest::ShowJobs | AdminRequest::ShowUniqueJobs | AdminRequest::Workers => {
                DENIED_LISTING
            }
            _ => return None,
        };
        (!self.admin_allowed(conn)).then_some(denied)
    }

    /// Whether a connection is inside `admin_allow` (or the list is empty).
    fn admin_allowed(&self, conn: ConnId) -> bool {
        let rules = &self.config.admin_allow;
        rules.is_empty()
            || self
                .conns
                .get(&conn)
                .and_then(|c| c.peer)
                .is_some_and(|ip| rules.iter().any(|r| r.contains(ip)))
    }

    fn render_workers(&self, out: &mut Vec<u8>) {
        let mut ids: Vec<&ConnId> = self.conns.keys().collect();
        ids.sort();
        for id in ids {
            let c = &self.conns[id];
            let _ = write!(out, "{} {} ", c.fd, c.ip);
            out.extend_from_slice(&c.client_id);
            out.extend_from_slice(b" :");
            for a in &c.abilities {
                out.push(b' ');
                out.extend_from_slice(&self.functions[a.func].name);
            }
            out.push(b'\n');
        }
        out.extend_from_slice(b".\n");
    }

    fn render_store(&self, out: &mut Vec<u8>) {
        match &self.store {
            None => out.extend_from_slice(b"memory\n"),
            Some(s) => {
                let h = &s.health;
                let _ = write!(out, "sqlite {} {} ", s.path.display(), s.durability.name());
                let _ = match h.failing_since {
                    None => writeln!(out, "ok rows={}", h.rows),
                    Some(since) => {
                        let error = h.error.replace(['\r', '\n'], " ");
                        writeln!(out, "failing rows={} since={since} error={error}", h.rows)
                    }
                };
            }
        }
        out.extend_from_slice(b".\n");
    }

    fn render_status(&self, out: &mut Vec<u8>) {
        for f in &self.functions {
            out.extend_from_slice(&f.name);
            let _ = writeln!(out, "\t{}\t{}\t{}", f.job_total, f.job_running, f.workers.len());
        }
        out.extend_from_slice(b".\n");
    }

    fn render_priority_status(&self, out: &mut Vec<u8>) {
        for f in &self.functions {
            out.extend_from_slice(&f.name);
            let _ = writeln!(
                out,
                "\t{}\t{}\t{}\t{}",
                f.queues[0].len(),
                f.queues[1].len() + f.scheduled,
                f.queues[2].len(),
                f.workers.len()
            );
        }
        out.extend_from_slice(b".\n");
    }

    fn sorted_jobs(&self) -> Vec<&super::state::Job> {
        let mut ids: Vec<_> = self.jobs.keys().copied().collect();
        ids.sort_unstable();
        ids.iter().map(|id| &self.jobs[id]).collect()
    }

    fn render_jobs(&self, out: &mut Vec<u8>) {
        for job in self.sorted_jobs() {
            out.extend_from_slice(&job.handle);
            let _ = writeln!(
                out,
                "\t{}\t{}\t{}",
                job.retries,
                u8::from(job.owner == Owner::Ignored),
                u8::from(job.owner == Owner::Background { queued: true })
            );
        }
        out.extend_from_slice(b".\n");
    }

    fn render_unique_jobs(&self, out: &mut Vec<u8>) {
        for job in self.sorted_jobs() {
            out.extend_from_slice(&job.unique);
            out.push(b'\n');
        }
        out.extend_from_slice(b".\n");
    }
}
