//! Shared test helpers: finding the real peers, guards that start and stop
//! servers (gearmand and gearframe's) on ephemeral loopback ports, polling,
//! and a raw connection that speaks binary packets and admin text lines.

#![allow(dead_code)]

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gearframe::proto::{Decoder, Frame, Magic, Packet, PacketType, Priority, SubmitKind};
use gearframe::server::{Server, ServerConfig, ServerHandle};

/// How long a receive waits before the test fails.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a server gets to start accepting connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Finds a peer executable (gearmand, gearman, gearadmin, python3 modules...).
///
/// Looks in `PATH` and in the sbin directories (gearmand lives in
/// `/usr/sbin`, which is often not on a user's `PATH`). When it is missing:
/// with `GEARFRAME_REQUIRE_PEERS=1` (as in CI) the test fails; otherwise a
/// loud line is printed and `None` returned, so the test returns early having
/// checked nothing.
pub fn peer(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    let executable = |p: &PathBuf| {
        p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if let Some(found) = dirs.iter().map(|d| d.join(name)).find(executable) {
        return Some(found);
    }
    missing(name)
}

/// Reports a missing peer (see [`peer`]).
pub fn missing<T>(what: &str) -> Option<T> {
    if std::env::var("GEARFRAME_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!("required peer `{what}` is not installed (GEARFRAME_REQUIRE_PEERS=1)");
    }
    eprintln!("PEER MISSING: {what} not found; this test checks nothing here");
    None
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr} after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Options both servers understand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Opts {
    /// `--job-retries`: drop a job after it was started this many times (0 = unlimited).
    pub job_retries: u32,
    /// `--worker-wakeup`: NOOPs per queued job (0 = every sleeper).
    pub worker_wakeup: u32,
    /// `--round-robin`.
    pub round_robin: bool,
}

/// gearmand on an ephemeral loopback port, killed and reaped on drop.
pub struct Gearmand {
    child: Child,
    addr: SocketAddr,
}

impl Gearmand {
    /// Starts gearmand, or returns `None` when it is not installed.
    ///
    /// Another process may take the free port before gearmand binds it, so
    /// the start is verified with `getpid` (the port must be served by our
    /// child) and retried on a fresh port.
    pub fn start(opts: &Opts) -> Option<Gearmand> {
        let bin = peer("gearmand")?;
        let mut last = String::new();
        for _ in 0..5 {
            match Gearmand::try_start(&bin, opts) {
                Ok(g) => return Some(g),
                Err(e) => last = e,
            }
        }
        panic!("gearmand did not start: {last}");
    }

    fn try_start(bin: &Path, opts: &Opts) -> Result<Gearmand, String> {
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg("--log-file=none")
            .arg(format!("--job-retries={}", opts.job_retries))
            .arg(format!("--worker-wakeup={}", opts.worker_wakeup));
        if opts.round_robin {
            cmd.arg("--round-robin");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut g = Gearmand { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = g.child.try_wait() {
                return Err(format!("gearmand exited early with {status}"));
            }
            if g.answers_as_itself() {
                return Ok(g);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "gearmand did not answer on {} within {START_TIMEOUT:?}",
                    g.addr
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// True when the port accepts and `getpid` names our child.
    fn answers_as_itself(&self) -> bool {
        let Ok(s) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) else {
            return false;
        };
        let mut c = RawConn::from_stream(s, "probe");
        c.send_line("getpid");
        let want = format!("OK {}\n", self.child.id());
        matches!(c.try_recv_line(Duration::from_secs(2)), Some(l) if l == want.as_bytes())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Gearmand {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// gearframe's embedded server on an ephemeral loopback port, stopped and
/// joined on drop.
pub struct Ours {
    handle: Option<ServerHandle>,
    addr: SocketAddr,
}

impl Ours {
    pub fn start(opts: &Opts) -> Ours {
        Ours::with_config(ServerConfig {
            job_retries: opts.job_retries,
            worker_wakeup: opts.worker_wakeup,
            round_robin: opts.round_robin,
            ..ServerConfig::default()
        })
    }

    /// Starts with a full config; `listen` is always replaced by 127.0.0.1:0.
    pub fn with_config(config: ServerConfig) -> Ours {
        let handle = Server::bind(ServerConfig { listen: "127.0.0.1:0".into(), ..config }).unwrap();
        let addr = handle.local_addr();
        Ours { handle: Some(handle), addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().unwrap()
    }

    /// Gives up the guard, for tests that watch the server stop by itself.
    pub fn into_handle(mut self) -> ServerHandle {
        self.handle.take().unwrap()
    }

    /// Stops the server and waits for all its threads.
    pub fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
            h.join();
        }
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
            h.join();
        }
    }
}

/// A child process killed and reaped on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gearframe -c CONFIG worker -s ADDR`, with nothing of this environment's
/// server list or log filter, stdin closed; the caller chooses the output.
pub fn gearframe_worker(config: &Path, addr: SocketAddr) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gearframe"));
    c.env_remove("GEARMAN_SERVERS")
        .env_remove("RUST_LOG")
        .arg("-c")
        .arg(config)
        .args(["worker", "-s", &addr.to_string()])
        .stdin(Stdio::null());
    c
}

/// Polls `f` until it returns `Some`, failing the test after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A packet received from a server, with owned arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkt {
    /// Magic of the packet (servers send `\0RES`).
    pub magic: Magic,
    /// Packet type.
    pub kind: PacketType,
    /// Arguments split by the type's argument count.
    pub args: Vec<Vec<u8>>,
}

impl Pkt {
    /// Argument `i`, empty when missing.
    pub fn arg(&self, i: usize) -> &[u8] {
        self.args.get(i).map_or(&[][..], |a| a.as_slice())
    }

    /// Argument `i` as lossy UTF-8.
    pub fn arg_str(&self, i: usize) -> String {
        String::from_utf8_lossy(self.arg(i)).into_owned()
    }
}

/// Renders bytes as a quoted string with non-printable bytes escaped.
pub fn quote(b: &[u8]) -> String {
    format!("\"{}\"", b.escape_ascii())
}

impl fmt::Display for Pkt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.magic != Magic::Res {
            write!(f, "(magic {:?}) ", self.magic)?;
        }
        f.write_str(self.kind.name())?;
        for a in &self.args {
            write!(f, " {}", quote(a))?;
        }
        Ok(())
    }
}

/// Renders a packet about to be sent, in the same style as [`Pkt`].
pub fn show_packet(p: &Packet<'_>) -> String {
    let mut s = p.kind().name().to_string();
    for a in p.args().iter() {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s
}

/// Builds a SUBMIT_JOB* packet of the given type.
pub fn submit<'a>(
    kind: PacketType,
    function: &'a [u8],
    unique: &'a [u8],
    data: &'a [u8],
) -> Packet<'a> {
    let kind = SubmitKind::of(kind).unwrap_or_else(|| panic!("{kind} is not a plain submit type"));
    Packet::Submit { kind, function, unique, data }
}

/// A foreground NORMAL submission.
pub fn fg<'a>(function: &'a [u8], unique: &'a [u8], data: &'a [u8]) -> Packet<'a> {
    Packet::Submit {
        kind: SubmitKind { priority: Priority::Normal, background: false },
        function,
        unique,
        data,
    }
}

/// A background NORMAL submission.
pub fn bg<'a>(function: &'a [u8], unique: &'a [u8], data: &'a [u8]) -> Packet<'a> {
    Packet::Submit {
        kind: SubmitKind { priority: Priority::Normal, background: true },
        function,
        unique,
        data,
    }
}

/// A raw header plus body, for packets the typed API cannot express.
pub fn raw_packet(magic: &[u8; 4], kind: u32, body: &[u8]) -> Vec<u8> {
    let mut v = magic.to_vec();
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

static SYNC_COUNTER: AtomicU64 = AtomicU64::new(1);

/// What a receive found.
#[derive(Debug)]
enum Got {
    Bytes,
    Eof,
    Timeout,
}

/// A TCP connection to a server, reading with timeouts.
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    name: String,
    buf: Vec<u8>,
    eof: bool,
}

impl RawConn {
    /// Connects to `addr`; `name` appears in failure messages.
    pub fn connect(addr: SocketAddr, name: &str) -> RawConn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{name}: connect to {addr}: {e}"));
        RawConn::from_stream(stream, name)
    }

    pub fn from_stream(stream: TcpStream, name: &str) -> RawConn {
        stream.set_nodelay(true).ok();
        stream.set_write_timeout(Some(Duration::from_secs(5))).ok();
        RawConn { stream, name: name.to_string(), buf: Vec::new(), eof: false }
    }

    /// The connection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends a packet with `\0REQ` magic.
    pub fn send(&mut self, packet: Packet<'_>) {
        let bytes = packet.to_vec(Magic::Req);
        self.send_bytes(&bytes);
    }

    /// Sends raw bytes.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            panic!("{}: send failed: {e}", self.name);
        }
    }

    /// Sends a text line, appending `\n`.
    pub fn send_line(&mut self, line: &str) {
        let mut v = line.as_bytes().to_vec();
        v.push(b'\n');
        self.send_bytes(&v);
    }

    /// Closes both directions.
    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Reads once, waiting until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Got {
        if self.eof {
            return Got::Eof;
        }
        let now = Instant::now();
        if now >= deadline {
            return Got::Timeout;
        }
        let wait = (deadline - now).max(Duration::from_millis(1));
        self.stream.set_read_timeout(Some(wait)).ok();
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                Got::Eof
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Got::Bytes
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Got::Timeout
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Got::Bytes,
            Err(_) => {
                // A reset counts as the server closing the connection.
                self.eof = true;
                Got::Eof
            }
        }
    }

    /// Decodes one binary packet from the front of the buffer, if whole.
    fn take_packet(&mut self) -> Option<Pkt> {
        if self.buf.is_empty() {
            return None;
        }
        if self.buf[0] != 0 {
            panic!(
                "{}: expected a binary packet, got text {}",
                self.name,
                quote(&self.buf[..self.buf.len().min(200)])
            );
        }
        let mut d = Decoder::new(u32::MAX);
        d.push(&self.buf);
        let (magic, kind, body) = match d.next_frame() {
            Ok(Some(Frame::Binary { magic, kind, body })) => (magic, kind, body.to_vec()),
            Ok(Some(Frame::Text(_))) | Ok(None) => return None,
            Err(e) => {
                panic!("{}: undecodable bytes from server: {e}: {}", self.name, quote(&self.buf))
            }
        };
        self.buf.drain(..12 + body.len());
        let args = match Packet::parse(kind, &body) {
            Ok(p) => p.args().iter().map(<[u8]>::to_vec).collect(),
            // Keep whatever arrived, split as far as it goes.
            Err(_) => {
                body.splitn(kind.arg_count().max(1), |&b| b == 0).map(<[u8]>::to_vec).collect()
            }
        };
        Some(Pkt { magic, kind, args })
    }

    /// Receives one packet, or `None` on timeout or end of stream.
    pub fn try_recv_packet(&mut self, timeout: Duration) -> Option<Pkt> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.take_packet() {
                return Some(p);
            }
            match self.fill(deadline) {
                Got::Bytes => {}
                Got::Eof | Got::Timeout => return None,
            }
        }
    }

    /// Receives one packet; panics with a clear message after [`RECV_TIMEOUT`].
    pub fn recv_packet(&mut self) -> Pkt {
        self.recv_packet_within(RECV_TIMEOUT)
    }

    /// Receives one packet; panics after `timeout`.
    pub fn recv_packet_within(&mut self, timeout: Duration) -> Pkt {
        match self.try_recv_packet(timeout) {
            Some(p) => p,
            None if self.eof => panic!(
                "{}: connection closed by the server while waiting for a packet (buffered: {})",
                self.name,
                quote(&self.buf)
            ),
            None => panic!(
                "{}: no packet within {timeout:?} (buffered: {})",
                self.name,
                quote(&self.buf)
            ),
        }
    }

    /// Receives one text line with its line ending kept, or `None` on timeout or end of stream.
    pub fn try_recv_line(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                return Some(self.buf.drain(..=i).collect());
            }
            match self.fill(deadline) {
                Got::Bytes => {}
                Got::Eof | Got::Timeout => return None,
            }
        }
    }

    /// Receives one text line, line ending kept; panics after [`RECV_TIMEOUT`].
    pub fn recv_line(&mut self) -> Vec<u8> {
        match self.try_recv_line(RECV_TIMEOUT) {
            Some(l) => l,
            None => panic!(
                "{}: no complete text line within {RECV_TIMEOUT:?} (eof: {}, buffered: {})",
                self.name,
                self.eof,
                quote(&self.buf)
            ),
        }
    }

    /// Receives the lines of a list reply up to and including the `.` line.
    /// A first line starting with `ERR ` is returned alone.
    pub fn recv_admin_list(&mut self) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        loop {
            let l = self.recv_line();
            let end = l == b".\n" || l == b".\r\n" || (lines.is_empty() && l.starts_with(b"ERR "));
            lines.push(l);
            if end {
                return lines;
            }
        }
    }

    /// Sends ECHO_REQ with a unique marker and returns every packet that
    /// arrived before the matching ECHO_RES.
    ///
    /// A server handles a connection's packets in order, so once the echo
    /// comes back everything it queued earlier for this connection has
    /// arrived: this asserts "nothing else arrived" without sleeping.
    pub fn sync(&mut self) -> Vec<Pkt> {
        let marker = format!("sync-{}", SYNC_COUNTER.fetch_add(1, Ordering::Relaxed));
        self.send(Packet::EchoReq { data: marker.as_bytes() });
        let mut before = Vec::new();
        loop {
            let p = self.recv_packet();
            if p.kind == PacketType::EchoRes && p.arg(0) == marker.as_bytes() {
                return before;
            }
            before.push(p);
        }
    }

    /// Waits until the server closes the connection; returns any bytes that
    /// arrived first. Panics if it stays open for `timeout`.
    pub fn expect_closed(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Got::Bytes => {}
                Got::Eof => return std::mem::take(&mut self.buf),
                Got::Timeout => panic!(
                    "{}: the server did not close the connection within {timeout:?} (received: {})",
                    self.name,
                    quote(&self.buf)
                ),
            }
        }
    }
}

/// True when the peer closed (a read returns 0 bytes or a reset) within
/// 10 s; false when the connection was still open then.
/// `received` counts the bytes read before the end.
pub fn closed_by_peer(s: &mut std::net::TcpStream, received: &mut usize) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 65536];
    loop {
        match std::io::Read::read(s, &mut buf) {
            Ok(0) => return true,
            Ok(n) => *received += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// A client for failover tests: short connect and ack limits and a quick
/// backoff, so a killed server is left fast, and a 256-job window.
pub fn failover_client<S: AsRef<str>>(servers: &[S]) -> gearframe::client::Client {
    gearframe::client::Client::builder()
        .servers(servers.iter().map(AsRef::as_ref))
        .connect_timeout(Duration::from_secs(1))
        .ack_timeout(Duration::from_secs(3))
        .job_timeout(Duration::from_secs(40))
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .window(256)
        .build()
        .unwrap()
}

/// Live processes (not zombies) whose command line contains `marker`.
pub fn live_with_marker(marker: &str) -> Vec<u32> {
    live_with_marker_except(marker, &[])
}

/// Live processes (not zombies) other than `except` whose command line
/// contains `marker`.
pub fn live_with_marker_except(marker: &str, except: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmdline: Vec<u8> = cmdline.into_iter().map(|b| if b == 0 { b' ' } else { b }).collect();
        if !except.contains(&pid)
            && String::from_utf8_lossy(&cmdline).contains(marker)
            && proc_state(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
        {
            out.push(pid);
        }
    }
    out
}

/// `(state, ppid)` of a process, from `/proc/PID/stat`.
pub fn proc_state(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut it = s[s.rfind(')')? + 1..].split_ascii_whitespace();
    Some((it.next()?.chars().next()?, it.next()?.parse().ok()?))
}

/// Those of `pids` that are zombie children of `parent`.
pub fn zombies_of(parent: u32, pids: &[u32]) -> Vec<u32> {
    pids.iter().copied().filter(|&p| proc_state(p) == Some(('Z', parent))).collect()
}

/// The pids written one per line to `path`.
pub fn pids_in(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_ascii_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Waits up to `limit` until no live process other than `except` has
/// `marker` in its command line; fails the test naming those left.
pub fn none_left(limit: Duration, marker: &str, except: &[u32]) {
    let deadline = Instant::now() + limit;
    loop {
        let left = live_with_marker_except(marker, except);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes with `{marker}` survived: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills (SIGKILL) every live process with `marker` in its command line on
/// drop, so a failing test leaves no daemon behind.
pub struct KillMarked(pub &'static str);

impl Drop for KillMarked {
    fn drop(&mut self) {
        for pid in live_with_marker(self.0) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

/// Which server program a [`ServerProc`] runs.
#[derive(Debug, Clone)]
enum Program {
    /// `gearframe server -L 127.0.0.1:PORT ARGS`.
    Gearframe,
    /// `gearmand --listen=127.0.0.1 --port=PORT --log-file=none ARGS`.
    Gearmand(PathBuf),
}

/// A server as a child process on a loopback port (`gearframe server` or
/// gearmand); killed and reaped on drop. It can be killed and started again
/// on the same port with the same arguments.
pub struct ServerProc {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    log: PathBuf,
    program: Program,
}

impl ServerProc {
    /// Starts `gearframe server` on a free port; `log` receives its stderr.
    pub fn start(args: &[&str], log: &Path) -> ServerProc {
        ServerProc::start_program(Program::Gearframe, args, log)
    }

    /// Starts gearmand with `args` on a free port, or returns `None` when it
    /// is not installed; `log` receives its stderr.
    pub fn start_gearmand(args: &[&str], log: &Path) -> Option<ServerProc> {
        let bin = peer("gearmand")?;
        Some(ServerProc::start_program(Program::Gearmand(bin), args, log))
    }

    fn start_program(program: Program, args: &[&str], log: &Path) -> ServerProc {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut last = String::new();
        // Another process may take the free port first: try a fresh one.
        for _ in 0..5 {
            let mut s = ServerProc {
                child: None,
                port: free_port(),
                args: args.clone(),
                log: log.into(),
                program: program.clone(),
            };
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => last = e,
            }
        }
        panic!("{} did not start: {last}", program.name());
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = match &self.program {
            Program::Gearframe => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_gearframe"));
                c.arg("server").args(["-L", &format!("127.0.0.1:{}", self.port)]);
                c
            }
            Program::Gearmand(bin) => {
                let mut c = Command::new(bin);
                c.arg("--listen=127.0.0.1")
                    .arg(format!("--port={}", self.port))
                    .arg("--log-file=none");
                c
            }
        };
        let child = cmd
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        self.child = Some(child);
        // A restart replays the whole persistent queue first.
        let limit = Duration::from_secs(120);
        let until = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                self.child = None;
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(format!("exited at start with {status}: {log}"));
            }
            if self.answers_as_itself() {
                return Ok(());
            }
            if Instant::now() > until {
                if let Some(mut c) = self.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(format!("no answer on port {} within {limit:?}", self.port));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// True when the port is served by our child (`getpid` names it).
    fn answers_as_itself(&self) -> bool {
        let Ok(mut c) = gearframe::conn::Connection::connect(
            &self.addr().to_string(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        c.queue_bytes(b"getpid\n");
        if c.flush().is_err() {
            return false;
        }
        let line = c.recv_line(Some(Instant::now() + Duration::from_secs(2)));
        matches!(line, Ok(l) if l == format!("OK {}", self.pid()))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn addr_string(&self) -> String {
        self.addr().to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The exit status when the process has exited (it is reaped then).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM; waits for a clean exit.
    pub fn terminate(&mut self) {
        let status = self.sigterm();
        assert!(status.success(), "server exited with {status}");
    }

    /// SIGTERM; waits for the exit and returns its status.
    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        self.signal("TERM", START_TIMEOUT)
    }

    /// Sends `SIG` (`INT`, `TERM`...); waits up to `limit` for the exit and
    /// returns its status.
    pub fn signal(&mut self, sig: &str, limit: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let ok = Command::new("kill").args([&format!("-{sig}"), &c.id().to_string()]).status();
        assert!(ok.unwrap().success());
        eventually(limit, &format!("server exit after SIG{sig}"), || c.try_wait().unwrap())
    }

    /// Starts again on the same port with the same arguments.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running server");
        let mut last = String::new();
        // The old process is reaped, so its port is free at once; a start
        // can still fail if someone else took it, which fails the test.
        for _ in 0..3 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last = e,
            }
        }
        panic!("restart on port {} failed: {last}", self.port);
    }

    /// A number of /proc/PID/status (VmRSS and VmHWM are in KiB).
    pub fn status_field(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Program {
    fn name(&self) -> &'static str {
        match self {
            Program::Gearframe => "gearframe server",
            Program::Gearmand(_) => "gearmand",
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// xorshift64*: deterministic random bytes, so a failure can be replayed
/// from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Sends `count` byte streams made by `make` (given the generator and the
/// stream's index from `first`), one connection each. Half of them (drawn
/// from `rng`) are half-closed and read until the server closes them; the
/// others are dropped at once. Returns how many were not closed within
/// `limit`.
pub fn spray_streams(
    addr: SocketAddr,
    rng: &mut Rng,
    first: usize,
    count: usize,
    limit: Duration,
    mut make: impl FnMut(&mut Rng, usize) -> Vec<u8>,
) -> usize {
    let mut not_closed = 0;
    for i in first..first + count {
        let bytes = make(rng, i);
        let mut s = TcpStream::connect_timeout(&addr, limit).expect("the server accepts");
        s.set_read_timeout(Some(limit)).expect("read timeout");
        s.set_write_timeout(Some(limit)).expect("write timeout");
        // The server may close mid-write after an error.
        let _ = s.write_all(&bytes);
        if rng.below(2) == 0 {
            let _ = s.shutdown(Shutdown::Write);
            let mut sink = Vec::new();
            match s.read_to_end(&mut sink) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) => {}
                Err(_) => not_closed += 1,
            }
        }
    }
    not_closed
}

/// One admin command on `c` and its reply lines, up to the `.` of a list
/// (or a first `ERR` line), each within `limit`.
pub fn admin_on(
    c: &mut gearframe::conn::Connection,
    line: &str,
    list: bool,
    limit: Duration,
) -> Vec<String> {
    c.queue_bytes(format!("{line}\n").as_bytes());
    c.flush().unwrap();
    let mut lines = Vec::new();
    loop {
        let l = c.recv_line(Some(Instant::now() + limit)).unwrap();
        let end = !list || l == "." || (lines.is_empty() && l.starts_with("ERR "));
        lines.push(l);
        if end {
            return lines;
        }
    }
}
