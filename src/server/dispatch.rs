//! Applies one decoded frame from a connection to the state.

use std::time::Duration;

use super::state::{ConnId, Control, State, Submission, atoi};
use crate::proto::admin::is_listable_name;
use crate::proto::{Frame, Magic, Packet, PacketType, ProtocolError};

/// Code of the ERROR for a function name holding a control character.
pub(crate) const INVALID_FUNCTION_NAME: &str = "INVALID_FUNCTION_NAME";
/// Code of the ERROR for a client id holding a control character.
pub(crate) const INVALID_CLIENT_ID: &str = "INVALID_CLIENT_ID";

/// The ERROR code and text for a packet whose function name or client id
/// holds a control character (see [`is_listable_name`]); `None` for every
/// other packet.
///
/// gearmand stores such names, and a name like `evil\n.\nfake\t9\t9\t9`
/// then forges rows of `status` and `workers` and ends them early. The
/// packet itself is well formed, so the connection stays open: the request
/// is refused as a full queue is, and nothing of it is applied.
fn invalid_name(p: &Packet<'_>) -> Option<(&'static str, &'static str)> {
    let (name, code, text) = match p {
        Packet::Submit { function, .. }
        | Packet::SubmitJobEpoch { function, .. }
        | Packet::SubmitReduceJob { function, .. }
        | Packet::CanDo { function }
        | Packet::CanDoTimeout { function, .. }
        | Packet::CantDo { function } => (
            function,
            INVALID_FUNCTION_NAME,
            "Function name holds a control character (tab, line break, NUL, DEL); use printable characters",
        ),
        Packet::SetClientId { id } => (
            id,
            INVALID_CLIENT_ID,
            "Client id holds a control character (tab, line break, NUL, DEL); use printable characters",
        ),
        _ => return None,
    };
    (!is_listable_name(name)).then_some((code, text))
}

impl State {
    /// Applies a frame; replies go to the outboxes.
    pub(crate) fn handle_frame(&mut self, conn: ConnId, frame: Frame<'_>) -> Control {
        match frame {
            Frame::Text(line) => self.admin(conn, line),
            Frame::Binary { magic: Magic::Res, kind, .. } => {
                log::debug!("conn={conn} sent {kind} with response magic");
                self.send_error(conn, "INVALID_MAGIC", "Request magic expected");
                Control::Continue
            }
            Frame::Binary { magic: Magic::Req, kind, body } => {
                log::trace!("conn={conn} packet={kind} size={}", body.len());
                // Types without arguments ignore any body they carry.
                let body = if kind.arg_count() == 0 { &[][..] } else { body };
                match Packet::parse(kind, body) {
                    Ok(p) => self.handle_packet(conn, p),
                    Err(e) => {
                        self.protocol_error(conn, &e);
                        Control::Close
                    }
                }
            }
        }
    }

    /// Answers a framing or argument error with an ERROR packet; the caller
    /// closes the connection afterwards.
    pub(crate) fn protocol_error(&mut self, conn: ConnId, e: &ProtocolError) {
        log::warn!("conn={conn} protocol error: {e}; closing connection");
        let (code, text) = match e {
            ProtocolError::BadMagic(_) => ("INVALID_MAGIC", "Request magic expected".to_string()),
            ProtocolError::UnknownType(_) => {
                ("INVALID_COMMAND", "Invalid command expected".to_string())
            }
            ProtocolError::BodyTooLarge { .. } => ("ARGUMENT_TOO_LARGE", e.to_string()),
            ProtocolError::LineTooLong { .. } => return,
            _ => ("INVALID_PACKET", e.to_string()),
        };
        self.send_error(conn, code, &text);
    }

    fn handle_packet(&mut self, conn: ConnId, p: Packet<'_>) -> Control {
        use PacketType as T;
        if let Some((code, text)) = invalid_name(&p) {
            log::info!("conn={conn} {}: refused with {code}", p.kind());
            self.send_error(conn, code, text);
            return Control::Continue;
        }
        match p {
            Packet::Submit { kind, function, unique, data } => self.submit(
                conn,
                Submission {
                    function,
                    unique,
                    data,
                    priority: kind.priority,
                    background: kind.background,
                    epoch: None,
                    reducer: None,
                },
            ),
            Packet::SubmitJobEpoch { function, unique, epoch, data } => {
                let when = u64::try_from(atoi(epoch)).unwrap_or(0);
                self.submit(
                    conn,
                    Submission {
                        function,
                        unique,
                        data,
                        priority: crate::proto::Priority::Normal,
                        background: true,
                        epoch: Some(when),
                        reducer: None,
                    },
                )
            }
            Packet::SubmitReduceJob { background, function, unique, reducer, data, .. } => self
                .submit(
                    conn,
                    Submission {
                        function,
                        unique,
                        data,
                        priority: crate::proto::Priority::Normal,
                        background,
                        epoch: None,
                        reducer: Some(reducer),
                    },
                ),
            Packet::CanDo { function } => self.can_do(conn, function, None),
            Packet::CanDoTimeout { function, timeout } => {
                let ms = atoi(timeout);
                let timeout = (ms > 0).then(|| Duration::from_millis(ms.max(1000) as u64));
                self.can_do(conn, function, timeout)
            }
            Packet::CantDo { function } => {
                if let Some(&fid) = self.func_index.get(function) {
                    self.drop_abilities(conn, Some(fid));
                }
            }
            Packet::ResetAbilities => self.drop_abilities(conn, None),
            Packet::PreSleep => self.pre_sleep(conn),
            Packet::GrabJob => self.grab(conn, T::GrabJob),
            Packet::GrabJobUniq => self.grab(conn, T::GrabJobUniq),
            Packet::GrabJobAll => self.grab(conn, T::GrabJobAll),
            Packet::WorkStatus { handle, numerator, denominator } => {
                self.work(conn, T::WorkStatus, handle, &[numerator, denominator])
            }
            Packet::WorkComplete { handle, data } => {
                self.work(conn, T::WorkComplete, handle, &[data])
            }
            Packet::WorkFail { handle } => self.work(conn, T::WorkFail, handle, &[]),
            Packet::WorkException { handle, data } => {
                self.work(conn, T::WorkException, handle, &[data])
            }
            Packet::WorkData { handle, data } => self.work(conn, T::WorkData, handle, &[data]),
            Packet::WorkWarning { handle, data } => {
                self.work(conn, T::WorkWarning, handle, &[data])
            }
            Packet::GetStatus { handle } => self.get_status(conn, handle),
            Packet::GetStatusUnique { unique } => self.get_status_unique(conn, unique),
            Packet::EchoReq { data } => self.send(conn, T::EchoRes, &[data]),
            Packet::SetClientId { id } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.client_id = id[..id.len().min(127)].into();
                }
            }
            Packet::OptionReq { option } => {
                if option.eq_ignore_ascii_case(crate::proto::EXCEPTIONS_SAFE_OPTION.as_bytes()) {
                    if self.config.exceptions {
                        self.send_error(
                            conn,
                            "EXCEPTIONS_FOR_ALL",
                            "every client gets WORK_EXCEPTION (the server runs with exceptions on)",
                        );
                    } else {
                        self.send(conn, T::OptionRes, &[option]);
                    }
                    return Control::Continue;
                }
                let exceptions = option.eq_ignore_ascii_case(b"exceptions");
                let push = option.eq_ignore_ascii_case(crate::proto::PUSH_OPTION.as_bytes());
                if exceptions || push {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.exceptions |= exceptions;
                        c.push |= push;
                    }
                    self.send(conn, T::OptionRes, &[option]);
                    if push {
                        self.offer(conn);
                    }
                } else {
                    self.send_error(
                        conn,
                        "UNKNOWN_OPTION",
                        "Server does not recognize given option",
                    );
                }
            }
            Packet::Unused
            | Packet::AllYours
            | Packet::SubmitJobSched { .. }
            | Packet::Noop
            | Packet::JobCreated { .. }
            | Packet::NoJob
            | Packet::JobAssign { .. }
            | Packet::EchoRes { .. }
            | Packet::Error { .. }
            | Packet::StatusRes { .. }
            | Packet::OptionRes { .. }
            | Packet::JobAssignUniq { .. }
            | Packet::JobAssignAll { .. }
            | Packet::StatusResUnique { .. } => {
                self.send_error(conn, "INVALID_COMMAND", "Command not expected")
            }
        }
        Control::Continue
    }
}
