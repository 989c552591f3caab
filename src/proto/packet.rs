//! Packet types, magic, and the typed view of every packet's arguments.
//!
//! | #  | name                          | direction | arguments (wire layout)                               |
//! |----|-------------------------------|-----------|-------------------------------------------------------|
//! | 1  | CAN_DO                        | W→S       | `func`                                                |
//! | 2  | CANT_DO                       | W→S       | `func`                                                |
//! | 3  | RESET_ABILITIES               | W→S       | —                                                     |
//! | 4  | PRE_SLEEP                     | W→S       | —                                                     |
//! | 6  | NOOP                          | S→W       | —                                                     |
//! | 7  | SUBMIT_JOB                    | C→S       | `func\0 unique\0 data`                                |
//! | 8  | JOB_CREATED                   | S→C       | `handle`                                              |
//! | 9  | GRAB_JOB                      | W→S       | —                                                     |
//! | 10 | NO_JOB                        | S→W       | —                                                     |
//! | 11 | JOB_ASSIGN                    | S→W       | `handle\0 func\0 data`                                |
//! | 12 | WORK_STATUS                   | W→S, S→C  | `handle\0 numerator\0 denominator`                    |
//! | 13 | WORK_COMPLETE                 | W→S, S→C  | `handle\0 data`                                       |
//! | 14 | WORK_FAIL                     | W→S, S→C  | `handle`                                              |
//! | 15 | GET_STATUS                    | C→S       | `handle`                                              |
//! | 16 | ECHO_REQ                      | C/W→S     | `data`                                                |
//! | 17 | ECHO_RES                      | S→C/W     | `data`                                                |
//! | 18 | SUBMIT_JOB_BG                 | C→S       | `func\0 unique\0 data`                                |
//! | 19 | ERROR                         | S→C/W     | `code\0 text`                                         |
//! | 20 | STATUS_RES                    | S→C       | `handle\0 known\0 running\0 num\0 den`                |
//! | 21 | SUBMIT_JOB_HIGH               | C→S       | `func\0 unique\0 data`                                |
//! | 22 | SET_CLIENT_ID                 | C/W→S     | `id`                                                  |
//! | 23 | CAN_DO_TIMEOUT                | W→S       | `func\0 timeout_ms`                                   |
//! | 24 | ALL_YOURS                     | W→S       | —                                                     |
//! | 25 | WORK_EXCEPTION                | W→S, S→C  | `handle\0 data`                                       |
//! | 26 | OPTION_REQ                    | C/W→S     | `option`                                              |
//! | 27 | OPTION_RES                    | S→C/W     | `option`                                              |
//! | 28 | WORK_DATA                     | W→S, S→C  | `handle\0 data`                                       |
//! | 29 | WORK_WARNING                  | W→S, S→C  | `handle\0 data`                                       |
//! | 30 | GRAB_JOB_UNIQ                 | W→S       | —                                                     |
//! | 31 | JOB_ASSIGN_UNIQ               | S→W       | `handle\0 func\0 unique\0 data`                       |
//! | 32 | SUBMIT_JOB_HIGH_BG            | C→S       | `func\0 unique\0 data`                                |
//! | 33 | SUBMIT_JOB_LOW                | C→S       | `func\0 unique\0 data`                                |
//! | 34 | SUBMIT_JOB_LOW_BG             | C→S       | `func\0 unique\0 data`                                |
//! | 35 | SUBMIT_JOB_SCHED              | C→S       | `func\0 unique\0 min\0 hour\0 mday\0 month\0 wday\0 data` |
//! | 36 | SUBMIT_JOB_EPOCH              | C→S       | `func\0 unique\0 epoch\0 data`                        |
//! | 37 | SUBMIT_REDUCE_JOB             | C→S       | `func\0 unique\0 reducer\0 aggregator\0 data`         |
//! | 38 | SUBMIT_REDUCE_JOB_BACKGROUND  | C→S       | `func\0 unique\0 reducer\0 aggregator\0 data`         |
//! | 39 | GRAB_JOB_ALL                  | W→S       | —                                                     |
//! | 40 | JOB_ASSIGN_ALL                | S→W       | `handle\0 func\0 unique\0 reducer\0 data`             |
//! | 41 | GET_STATUS_UNIQUE             | C→S       | `unique`                                              |
//! | 42 | STATUS_RES_UNIQUE             | S→C       | `unique\0 known\0 running\0 num\0 den\0 clients`      |
//!
//! Only the last argument of a packet may contain NUL bytes; the others are
//! NUL-terminated on the wire.

use super::error::ProtocolError;

/// Length of the binary packet header: magic, type and body size.
pub const HEADER_LEN: usize = 12;

/// The 4-byte magic at the start of a binary packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Magic {
    /// `\0REQ`: sent to a server.
    Req,
    /// `\0RES`: sent by a server.
    Res,
}

impl Magic {
    /// The four bytes on the wire.
    pub const fn bytes(self) -> [u8; 4] {
        match self {
            Magic::Req => *b"\0REQ",
            Magic::Res => *b"\0RES",
        }
    }

    /// Parses the four magic bytes.
    pub fn from_bytes(b: [u8; 4]) -> Option<Magic> {
        match &b {
            b"\0REQ" => Some(Magic::Req),
            b"\0RES" => Some(Magic::Res),
            _ => None,
        }
    }
}

macro_rules! packet_types {
    ($( $(#[$doc:meta])* $name:ident = $num:literal, $argc:literal, $wire:literal; )*) => {
        /// Every packet type of the binary protocol, with its number on the wire.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum PacketType {
            $( $(#[$doc])* $name = $num, )*
        }

        impl PacketType {
            /// All packet types, in numeric order.
            pub const ALL: &'static [PacketType] = &[$(PacketType::$name,)*];

            /// The packet type with this wire number, if there is one.
            pub const fn from_u32(n: u32) -> Option<PacketType> {
                match n {
                    $( $num => Some(PacketType::$name), )*
                    _ => None,
                }
            }

            /// How many arguments the packet carries.
            pub const fn arg_count(self) -> usize {
                match self {
                    $( PacketType::$name => $argc, )*
                }
            }

            /// The protocol's name for the type, such as `SUBMIT_JOB`.
            pub const fn name(self) -> &'static str {
                match self {
                    $( PacketType::$name => $wire, )*
                }
            }
        }
    };
}

packet_types! {
    /// Register an ability.
    CanDo = 1, 1, "CAN_DO";
    /// Unregister an ability.
    CantDo = 2, 1, "CANT_DO";
    /// Unregister every ability.
    ResetAbilities = 3, 0, "RESET_ABILITIES";
    /// The worker is about to sleep until NOOP.
    PreSleep = 4, 0, "PRE_SLEEP";
    /// Type 5 is unused by the protocol.
    Unused = 5, 0, "UNUSED";
    /// Wake-up for a sleeping worker.
    Noop = 6, 0, "NOOP";
    /// Foreground job, normal priority.
    SubmitJob = 7, 3, "SUBMIT_JOB";
    /// A job was accepted; carries its handle.
    JobCreated = 8, 1, "JOB_CREATED";
    /// Ask for a job.
    GrabJob = 9, 0, "GRAB_JOB";
    /// No job is available.
    NoJob = 10, 0, "NO_JOB";
    /// A job for the worker.
    JobAssign = 11, 3, "JOB_ASSIGN";
    /// Progress of a job.
    WorkStatus = 12, 3, "WORK_STATUS";
    /// A job succeeded.
    WorkComplete = 13, 2, "WORK_COMPLETE";
    /// A job failed.
    WorkFail = 14, 1, "WORK_FAIL";
    /// Status query by handle.
    GetStatus = 15, 1, "GET_STATUS";
    /// Echo request.
    EchoReq = 16, 1, "ECHO_REQ";
    /// Echo response.
    EchoRes = 17, 1, "ECHO_RES";
    /// Background job, normal priority.
    SubmitJobBg = 18, 3, "SUBMIT_JOB_BG";
    /// An error with code and text.
    Error = 19, 2, "ERROR";
    /// Reply to GET_STATUS.
    StatusRes = 20, 5, "STATUS_RES";
    /// Foreground job, high priority.
    SubmitJobHigh = 21, 3, "SUBMIT_JOB_HIGH";
    /// Name the connection.
    SetClientId = 22, 1, "SET_CLIENT_ID";
    /// Register an ability with a run-time limit in milliseconds.
    CanDoTimeout = 23, 2, "CAN_DO_TIMEOUT";
    /// Not implemented by servers.
    AllYours = 24, 0, "ALL_YOURS";
    /// A job failed with exception data.
    WorkException = 25, 2, "WORK_EXCEPTION";
    /// Set a connection option.
    OptionReq = 26, 1, "OPTION_REQ";
    /// An option was set.
    OptionRes = 27, 1, "OPTION_RES";
    /// Partial result data.
    WorkData = 28, 2, "WORK_DATA";
    /// Warning data.
    WorkWarning = 29, 2, "WORK_WARNING";
    /// Ask for a job, with its unique id in the reply.
    GrabJobUniq = 30, 0, "GRAB_JOB_UNIQ";
    /// A job for the worker, with its unique id.
    JobAssignUniq = 31, 4, "JOB_ASSIGN_UNIQ";
    /// Background job, high priority.
    SubmitJobHighBg = 32, 3, "SUBMIT_JOB_HIGH_BG";
    /// Foreground job, low priority.
    SubmitJobLow = 33, 3, "SUBMIT_JOB_LOW";
    /// Background job, low priority.
    SubmitJobLowBg = 34, 3, "SUBMIT_JOB_LOW_BG";
    /// Cron-style job (not implemented by servers).
    SubmitJobSched = 35, 8, "SUBMIT_JOB_SCHED";
    /// Background job runnable from a Unix time on.
    SubmitJobEpoch = 36, 4, "SUBMIT_JOB_EPOCH";
    /// Foreground map/reduce job.
    SubmitReduceJob = 37, 5, "SUBMIT_REDUCE_JOB";
    /// Background map/reduce job.
    SubmitReduceJobBackground = 38, 5, "SUBMIT_REDUCE_JOB_BACKGROUND";
    /// Ask for a job, with unique and reducer in the reply.
    GrabJobAll = 39, 0, "GRAB_JOB_ALL";
    /// A job for the worker, with unique and reducer.
    JobAssignAll = 40, 5, "JOB_ASSIGN_ALL";
    /// Status query by unique id.
    GetStatusUnique = 41, 1, "GET_STATUS_UNIQUE";
    /// Reply to GET_STATUS_UNIQUE.
    StatusResUnique = 42, 6, "STATUS_RES_UNIQUE";
}

impl std::fmt::Display for PacketType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Job priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    /// Runs before normal and low jobs of the same function.
    High = 0,
    /// The default.
    #[default]
    Normal = 1,
    /// Runs after high and normal jobs of the same function.
    Low = 2,
}

impl Priority {
    /// The three priorities from high to low.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// Index 0 (high) to 2 (low).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Lowercase name: `high`, `normal` or `low`.
    pub const fn name(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            _ => Err(format!("unknown priority `{s}`: use high, normal or low")),
        }
    }
}

/// The kind of a submission packet: its priority and whether the client waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitKind {
    /// Queue priority.
    pub priority: Priority,
    /// True for background (detached) jobs.
    pub background: bool,
}

impl SubmitKind {
    /// The SUBMIT_JOB* packet type for this priority and mode.
    pub const fn packet_type(self) -> PacketType {
        match (self.priority, self.background) {
            (Priority::High, false) => PacketType::SubmitJobHigh,
            (Priority::Normal, false) => PacketType::SubmitJob,
            (Priority::Low, false) => PacketType::SubmitJobLow,
            (Priority::High, true) => PacketType::SubmitJobHighBg,
            (Priority::Normal, true) => PacketType::SubmitJobBg,
            (Priority::Low, true) => PacketType::SubmitJobLowBg,
        }
    }

    /// The kind of a plain SUBMIT_JOB* packet type, if it is one.
    pub const fn of(t: PacketType) -> Option<SubmitKind> {
        let (priority, background) = match t {
            PacketType::SubmitJob => (Priority::Normal, false),
            PacketType::SubmitJobBg => (Priority::Normal, true),
            PacketType::SubmitJobHigh => (Priority::High, false),
            PacketType::SubmitJobHighBg => (Priority::High, true),
            PacketType::SubmitJobLow => (Priority::Low, false),
            PacketType::SubmitJobLowBg => (Priority::Low, true),
            _ => return None,
        };
        Some(SubmitKind { priority, background })
    }
}

/// A binary packet with its arguments borrowed from a body buffer.
///
/// Each variant names the arguments of its packet type in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are the protocol's argument names
pub enum Packet<'a> {
    CanDo {
        function: &'a [u8],
    },
    CantDo {
        function: &'a [u8],
    },
    ResetAbilities,
    PreSleep,
    Unused,
    Noop,
    /// SUBMIT_JOB, SUBMIT_JOB_BG, SUBMIT_JOB_HIGH(_BG), SUBMIT_JOB_LOW(_BG).
    Submit {
        kind: SubmitKind,
        function: &'a [u8],
        unique: &'a [u8],
        data: &'a [u8],
    },
    JobCreated {
        handle: &'a [u8],
    },
    GrabJob,
    NoJob,
    JobAssign {
        handle: &'a [u8],
        function: &'a [u8],
        data: &'a [u8],
    },
    WorkStatus {
        handle: &'a [u8],
        numerator: &'a [u8],
        denominator: &'a [u8],
    },
    WorkComplete {
        handle: &'a [u8],
        data: &'a [u8],
    },
    WorkFail {
        handle: &'a [u8],
    },
    GetStatus {
        handle: &'a [u8],
    },
    EchoReq {
        data: &'a [u8],
    },
    EchoRes {
        data: &'a [u8],
    },
    Error {
        code: &'a [u8],
        text: &'a [u8],
    },
    StatusRes {
        handle: &'a [u8],
        known: &'a [u8],
        running: &'a [u8],
        numerator: &'a [u8],
        denominator: &'a [u8],
    },
    SetClientId {
        id: &'a [u8],
    },
    CanDoTimeout {
        function: &'a [u8],
        timeout: &'a [u8],
    },
    AllYours,
    WorkException {
        handle: &'a [u8],
        data: &'a [u8],
    },
    OptionReq {
        option: &'a [u8],
    },
    OptionRes {
        option: &'a [u8],
    },
    WorkData {
        handle: &'a [u8],
        data: &'a [u8],
    },
    WorkWarning {
        handle: &'a [u8],
        data: &'a [u8],
    },
    GrabJobUniq,
    JobAssignUniq {
        handle: &'a [u8],
        function: &'a [u8],
        unique: &'a [u8],
        data: &'a [u8],
    },
    SubmitJobSched {
        function: &'a [u8],
        unique: &'a [u8],
        minute: &'a [u8],
        hour: &'a [u8],
        mday: &'a [u8],
        month: &'a [u8],
        wday: &'a [u8],
        data: &'a [u8],
    },
    SubmitJobEpoch {
        function: &'a [u8],
        unique: &'a [u8],
        epoch: &'a [u8],
        data: &'a [u8],
    },
    SubmitReduceJob {
        background: bool,
        function: &'a [u8],
        unique: &'a [u8],
        reducer: &'a [u8],
        aggregator: &'a [u8],
        data: &'a [u8],
    },
    GrabJobAll,
    JobAssignAll {
        handle: &'a [u8],
        function: &'a [u8],
        unique: &'a [u8],
        reducer: &'a [u8],
        data: &'a [u8],
    },
    GetStatusUnique {
        unique: &'a [u8],
    },
    StatusResUnique {
        unique: &'a [u8],
        known: &'a [u8],
        running: &'a [u8],
        numerator: &'a [u8],
        denominator: &'a [u8],
        clients: &'a [u8],
    },
}

/// Splits `body` into exactly `n` arguments: `n - 1` NUL-terminated ones and
/// the rest. Returns `None` when there are fewer than `n - 1` NULs.
fn split_args<const N: usize>(body: &[u8]) -> Option<[&[u8]; N]> {
    let mut out: [&[u8]; N] = [&[]; N];
    if N == 0 {
        return if body.is_empty() { Some(out) } else { None };
    }
    let mut rest = body;
    for slot in out.iter_mut().take(N - 1) {
        let pos = rest.iter().position(|&b| b == 0)?;
        *slot = &rest[..pos];
        rest = &rest[pos + 1..];
    }
    out[N - 1] = rest;
    Some(out)
}

impl<'a> Packet<'a> {
    /// Parses a packet body of the given type into its arguments.
    ///
    /// # Errors
    /// [`ProtocolError::TooFewArguments`] when the body has fewer NUL
    /// separators than the type needs; [`ProtocolError::UnexpectedBody`] when
    /// a type without arguments carries a body.
    pub fn parse(kind: PacketType, body: &'a [u8]) -> Result<Packet<'a>, ProtocolError> {
        use PacketType as T;
        let few = || ProtocolError::TooFewArguments { kind, expected: kind.arg_count() };
        macro_rules! args {
            ($n:literal) => {
                split_args::<$n>(body).ok_or_else(few)?
            };
        }
        let empty = |p: Packet<'a>| {
            if body.is_empty() { Ok(p) } else { Err(ProtocolError::UnexpectedBody { kind }) }
        };
        Ok(match kind {
            T::CanDo => Packet::CanDo { function: body },
            T::CantDo => Packet::CantDo { function: body },
            T::ResetAbilities => return empty(Packet::ResetAbilities),
            T::PreSleep => return empty(Packet::PreSleep),
            T::Unused => return empty(Packet::Unused),
            T::Noop => return empty(Packet::Noop),
            T::SubmitJob
            | T::SubmitJobBg
            | T::SubmitJobHigh
            | T::SubmitJobHighBg
            | T::SubmitJobLow
            | T::SubmitJobLowBg => {
                let [function, unique, data] = args!(3);
                let kind = SubmitKind::of(kind)
                    .unwrap_or(SubmitKind { priority: Priority::Normal, background: false });
                Packet::Submit { kind, function, unique, data }
            }
            T::JobCreated => Packet::JobCreated { handle: body },
            T::GrabJob => return empty(Packet::GrabJob),
            T::NoJob => return empty(Packet::NoJob),
            T::JobAssign => {
                let [handle, function, data] = args!(3);
                Packet::JobAssign { handle, function, data }
            }
            T::WorkStatus => {
                let [handle, numerator, denominator] = args!(3);
                Packet::WorkStatus { handle, numerator, denominator }
            }
            T::WorkComplete => {
                let [handle, data] = args!(2);
                Packet::WorkComplete { handle, data }
            }
            T::WorkFail => Packet::WorkFail { handle: body },
            T::GetStatus => Packet::GetStatus { handle: body },
            T::EchoReq => Packet::EchoReq { data: body },
            T::EchoRes => Packet::EchoRes { data: body },
            T::Error => {
                let [code, text] = args!(2);
                Packet::Error { code, text }
            }
            T::StatusRes => {
                let [handle, known, running, numerator, denominator] = args!(5);
                Packet::StatusRes { handle, known, running, numerator, denominator }
            }
            T::SetClientId => Packet::SetClientId { id: body },
            T::CanDoTimeout => {
                let [function, timeout] = args!(2);
                Packet::CanDoTimeout { function, timeout }
            }
            T::AllYours => return empty(Packet::AllYours),
            T::WorkException => {
                let [handle, data] = args!(2);
                Packet::WorkException { handle, data }
            }
            T::OptionReq => Packet::OptionReq { option: body },
            T::OptionRes => Packet::OptionRes { option: body },
            T::WorkData => {
                let [handle, data] = args!(2);
                Packet::WorkData { handle, data }
            }
            T::WorkWarning => {
                let [handle, data] = args!(2);
                Packet::WorkWarning { handle, data }
            }
            T::GrabJobUniq => return empty(Packet::GrabJobUniq),
            T::JobAssignUniq => {
                let [handle, function, unique, data] = args!(4);
                Packet::JobAssignUniq { handle, function, unique, data }
            }
            T::SubmitJobSched => {
                let [function, unique, minute, hour, mday, month, wday, data] = args!(8);
                Packet::SubmitJobSched { function, unique, minute, hour, mday, month, wday, data }
            }
            T::SubmitJobEpoch => {
                let [function, unique, epoch, data] = args!(4);
                Packet::SubmitJobEpoch { function, unique, epoch, data }
            }
            T::SubmitReduceJob | T::SubmitReduceJobBackground => {
                let [function, unique, reducer, aggregator, data] = args!(5);
                Packet::SubmitReduceJob {
                    background: kind == T::SubmitReduceJobBackground,
                    function,
                    unique,
                    reducer,
                    aggregator,
                    data,
                }
            }
            T::GrabJobAll => return empty(Packet::GrabJobAll),
            T::JobAssignAll => {
                let [handle, function, unique, reducer, data] = args!(5);
                Packet::JobAssignAll { handle, function, unique, reducer, data }
            }
            T::GetStatusUnique => Packet::GetStatusUnique { unique: body },
            T::StatusResUnique => {
                let [unique, known, running, numerator, denominator, clients] = args!(6);
                Packet::StatusResUnique { unique, known, running, numerator, denominator, clients }
            }
        })
    }

    /// The packet's type.
    pub fn kind(&self) -> PacketType {
        use PacketType as T;
        match self {
            Packet::CanDo { .. } => T::CanDo,
            Packet::CantDo { .. } => T::CantDo,
            Packet::ResetAbilities => T::ResetAbilities,
            Packet::PreSleep => T::PreSleep,
            Packet::Unused => T::Unused,
            Packet::Noop => T::Noop,
            Packet::Submit { kind, .. } => kind.packet_type(),
            Packet::JobCreated { .. } => T::JobCreated,
            Packet::GrabJob => T::GrabJob,
            Packet::NoJob => T::NoJob,
            Packet::JobAssign { .. } => T::JobAssign,
            Packet::WorkStatus { .. } => T::WorkStatus,
            Packet::WorkComplete { .. } => T::WorkComplete,
            Packet::WorkFail { .. } => T::WorkFail,
            Packet::GetStatus { .. } => T::GetStatus,
            Packet::EchoReq { .. } => T::EchoReq,
            Packet::EchoRes { .. } => T::EchoRes,
            Packet::Error { .. } => T::Error,
            Packet::StatusRes { .. } => T::StatusRes,
            Packet::SetClientId { .. } => T::SetClientId,
            Packet::CanDoTimeout { .. } => T::CanDoTimeout,
            Packet::AllYours => T::AllYours,
            Packet::WorkException { .. } => T::WorkException,
            Packet::OptionReq { .. } => T::OptionReq,
            Packet::OptionRes { .. } => T::OptionRes,
            Packet::WorkData { .. } => T::WorkData,
            Packet::WorkWarning { .. } => T::WorkWarning,
            Packet::GrabJobUniq => T::GrabJobUniq,
            Packet::JobAssignUniq { .. } => T::JobAssignUniq,
            Packet::SubmitJobSched { .. } => T::SubmitJobSched,
            Packet::SubmitJobEpoch { .. } => T::SubmitJobEpoch,
            Packet::SubmitReduceJob { background: false, .. } => T::SubmitReduceJob,
            Packet::SubmitReduceJob { background: true, .. } => T::SubmitReduceJobBackground,
            Packet::GrabJobAll => T::GrabJobAll,
            Packet::JobAssignAll { .. } => T::JobAssignAll,
            Packet::GetStatusUnique { .. } => T::GetStatusUnique,
            Packet::StatusResUnique { .. } => T::StatusResUnique,
        }
    }

    /// The arguments in wire order (up to 8).
    pub fn args(&self) -> ArgList<'a> {
        let mut a = ArgList { args: [&[]; 8], len: 0 };
        let mut push = |x: &'a [u8]| {
            a.args[a.len] = x;
            a.len += 1;
        };
        match *self {
            Packet::ResetAbilities
            | Packet::PreSleep
            | Packet::Unused
            | Packet::Noop
            | Packet::GrabJob
            | Packet::NoJob
            | Packet::AllYours
            | Packet::GrabJobUniq
            | Packet::GrabJobAll => {}
            Packet::CanDo { function } | Packet::CantDo { function } => push(function),
            Packet::Submit { function, unique, data, .. } => {
                push(function);
                push(unique);
                push(data);
            }
            Packet::JobCreated { handle }
            | Packet::WorkFail { handle }
            | Packet::GetStatus { handle } => push(handle),
            Packet::JobAssign { handle, function, data } => {
                push(handle);
                push(function);
                push(data);
            }
            Packet::WorkStatus { handle, numerator, denominator } => {
                push(handle);
                push(numerator);
                push(denominator);
            }
            Packet::WorkComplete { handle, data }
            | Packet::WorkException { handle, data }
            | Packet::WorkData { handle, data }
            | Packet::WorkWarning { handle, data } => {
                push(handle);
                push(data);
            }
            Packet::EchoReq { data } | Packet::EchoRes { data } => push(data),
            Packet::Error { code, text } => {
                push(code);
                push(text);
            }
            Packet::StatusRes { handle, known, running, numerator, denominator } => {
                for x in [handle, known, running, numerator, denominator] {
                    push(x);
                }
            }
            Packet::SetClientId { id } => push(id),
            Packet::CanDoTimeout { function, timeout } => {
                push(function);
                push(timeout);
            }
            Packet::OptionReq { option } | Packet::OptionRes { option } => push(option),
            Packet::JobAssignUniq { handle, function, unique, data } => {
                for x in [handle, function, unique, data] {
                    push(x);
                }
            }
            Packet::SubmitJobSched { function, unique, minute, hour, mday, month, wday, data } => {
                for x in [function, unique, minute, hour, mday, month, wday, data] {
                    push(x);
                }
            }
            Packet::SubmitJobEpoch { function, unique, epoch, data } => {
                for x in [function, unique, epoch, data] {
                    push(x);
                }
            }
            Packet::SubmitReduceJob { function, unique, reducer, aggregator, data, .. } => {
                for x in [function, unique, reducer, aggregator, data] {
                    push(x);
                }
            }
            Packet::JobAssignAll { handle, function, unique, reducer, data } => {
                for x in [handle, function, unique, reducer, data] {
                    push(x);
                }
            }
            Packet::GetStatusUnique { unique } => push(unique),
            Packet::StatusResUnique { unique, known, running, numerator, denominator, clients } => {
                for x in [unique, known, running, numerator, denominator, clients] {
                    push(x);
                }
            }
        }
        a
    }

    /// Size of the body on the wire.
    pub fn body_len(&self) -> usize {
        let a = self.args();
        let n = a.len();
        a.iter().map(|x| x.len()).sum::<usize>() + n.saturating_sub(1)
    }

    /// Checks that no argument but the last contains a NUL byte.
    ///
    /// # Errors
    /// [`ProtocolError::NulInArgument`] naming the argument's position.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let a = self.args();
        let n = a.len();
        for (i, arg) in a.iter().enumerate().take(n.saturating_sub(1)) {
            if arg.contains(&0) {
                return Err(ProtocolError::NulInArgument { kind: self.kind(), index: i });
            }
        }
        Ok(())
    }

    /// Appends the packet (header and body) to `out`.
    ///
    /// The caller is responsible for arguments without NUL bytes (see
    /// [`Packet::validate`]); a body over `u32::MAX` bytes cannot be framed and
    /// is refused.
    ///
    /// # Errors
    /// [`ProtocolError::BodyTooLarge`] for a body that does not fit in a u32.
    pub fn encode(&self, magic: Magic, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let len = self.body_len();
        let size = u32::try_from(len)
            .map_err(|_| ProtocolError::BodyTooLarge { size: len as u64, max: u32::MAX })?;
        out.reserve(HEADER_LEN + len);
        out.extend_from_slice(&magic.bytes());
        out.extend_from_slice(&(self.kind() as u32).to_be_bytes());
        out.extend_from_slice(&size.to_be_bytes());
        let a = self.args();
        for (i, arg) in a.iter().enumerate() {
            if i > 0 {
                out.push(0);
            }
            out.extend_from_slice(arg);
        }
        Ok(())
    }

    /// Encodes into a new vector.
    pub fn to_vec(&self, magic: Magic) -> Vec<u8> {
        let mut v = Vec::new();
        // A body over 4 GiB cannot come from a parsed packet; such a call
        // yields an empty vector.
        if self.encode(magic, &mut v).is_err() {
            v.clear();
        }
        v
    }
}

/// The arguments of a packet in wire order.
#[derive(Debug, Clone, Copy)]
pub struct ArgList<'a> {
    args: [&'a [u8]; 8],
    len: usize,
}

impl<'a> ArgList<'a> {
    /// Number of arguments.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True for packets without arguments.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Iterates over the arguments.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.args[..self.len].iter().copied()
    }
}

/// Appends a packet built from raw arguments: `args` are joined with NULs.
///
/// This is the fast path used by the server to write replies without building
/// a [`Packet`] first.
pub fn encode_raw(magic: Magic, kind: PacketType, args: &[&[u8]], out: &mut Vec<u8>) {
    let len: usize = args.iter().map(|a| a.len()).sum::<usize>() + args.len().saturating_sub(1);
    out.reserve(HEADER_LEN + len);
    out.extend_from_slice(&magic.bytes());
    out.extend_from_slice(&(kind as u32).to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_arg_counts_match_the_table() {
        assert_eq!(PacketType::ALL.len(), 42);
        for (i, t) in PacketType::ALL.iter().enumerate() {
            assert_eq!(*t as u32, i as u32 + 1);
            assert_eq!(PacketType::from_u32(*t as u32), Some(*t));
        }
        assert_eq!(PacketType::from_u32(0), None);
        assert_eq!(PacketType::from_u32(43), None);
        assert_eq!(PacketType::SubmitReduceJob.arg_count(), 5);
        assert_eq!(PacketType::StatusResUnique.arg_count(), 6);
    }

    #[test]
    fn submit_example_from_protocol_text() {
        let p = Packet::Submit {
            kind: SubmitKind { priority: Priority::Normal, background: false },
            function: b"reverse",
            unique: b"",
            data: b"test",
        };
        let bytes = p.to_vec(Magic::Req);
        assert_eq!(bytes, b"\0REQ\x00\x00\x00\x07\x00\x00\x00\x0dreverse\x00\x00test".to_vec());
    }

    #[test]
    fn last_argument_keeps_nuls() {
        let p = Packet::parse(PacketType::WorkComplete, b"H:x:1\0a\0b\0").unwrap();
        assert_eq!(p, Packet::WorkComplete { handle: b"H:x:1", data: b"a\0b\0" });
    }

    #[test]
    fn too_few_arguments_is_an_error() {
        assert_eq!(
            Packet::parse(PacketType::SubmitJob, b"f\0data"),
            Err(ProtocolError::TooFewArguments { kind: PacketType::SubmitJob, expected: 3 })
        );
    }

    #[test]
    fn nul_in_non_final_argument_is_refused() {
        let p = Packet::CanDoTimeout { function: b"a\0b", timeout: b"10" };
        assert_eq!(
            p.validate(),
            Err(ProtocolError::NulInArgument { kind: PacketType::CanDoTimeout, index: 0 })
        );
    }
}
