//! Differential tests: each scenario is a scripted conversation (binary
//! packets and admin lines over several connections) that runs against
//! gearmand 1.1.20 and against gearframe's server; the normalised transcripts
//! must be equal.
//!
//! Normalisation: job handles become `H1`, `H2`, ... in order of first
//! appearance (also inside admin output), the fd column of `workers`, the pid
//! of `getpid` and the version of `version` are masked, and the lines of list
//! replies are sorted, because servers print them in hash order.
//!
//! Where gearframe deliberately differs from gearmand, the behaviour is not
//! compared here; the `ours_*` tests at the end check gearframe alone.
//!
//! `GEARFRAME_DIFF_GEARMAND_ONLY=1` runs each scenario against gearmand only
//! and prints its transcript.

use crate::support::{
    Gearmand, Opts, Ours, Pkt, RawConn, bg, fg, quote, raw_packet, show_packet, submit,
};
use gearframe::proto::{Packet, PacketType as T};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

/// An epoch (2100-01-01) that is never due while the tests run.
const FAR_FUTURE: &[u8] = b"4102444800";

/// The hidden connection used to wait until the server has seen a close.
const CTL: &str = "__ctl";

/// One run of a scenario against one server: its connections and transcript.
struct Session {
    addr: SocketAddr,
    conns: BTreeMap<String, RawConn>,
    ctl: RawConn,
    lines: Vec<String>,
    handles: Vec<String>,
}

impl Session {
    fn new(addr: SocketAddr) -> Session {
        let mut ctl = RawConn::connect(addr, CTL);
        let early = ctl.sync();
        assert!(early.is_empty(), "unexpected packets on a new connection: {early:?}");
        Session { addr, conns: BTreeMap::new(), ctl, lines: Vec::new(), handles: Vec::new() }
    }

    /// The named connection, opened on first use. A fresh connection is
    /// synced once, so the server has registered it before the script goes on.
    fn conn(&mut self, name: &str) -> &mut RawConn {
        if !self.conns.contains_key(name) {
            let mut c = RawConn::connect(self.addr, name);
            let early = c.sync();
            assert!(early.is_empty(), "{name}: unexpected packets on a new connection: {early:?}");
            self.conns.insert(name.to_string(), c);
        }
        self.conns.get_mut(name).expect("just inserted")
    }

    /// Appends a transcript line with handles replaced by their labels.
    fn rec(&mut self, line: String) {
        let l = self.label_handles(&line);
        self.lines.push(l);
    }

    fn label_handles(&mut self, s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some((start, end)) = find_handle(rest) {
            out.push_str(&rest[..start]);
            let h = &rest[start..end];
            let n = match self.handles.iter().position(|x| x == h) {
                Some(i) => i + 1,
                None => {
                    self.handles.push(h.to_string());
                    self.handles.len()
                }
            };
            out.push_str(&format!("H{n}"));
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }

    /// The raw handle labelled `Hn` in this transcript.
    fn h(&self, n: usize) -> Vec<u8> {
        match self.handles.get(n - 1) {
            Some(h) => h.as_bytes().to_vec(),
            None => format!("missing-handle-{n}").into_bytes(),
        }
    }

    /// A free-form line in the transcript.
    fn note(&mut self, text: &str) {
        self.rec(format!("-- {text}"));
    }

    fn send(&mut self, c: &str, p: Packet<'_>) {
        let shown = show_packet(&p);
        self.conn(c).send(p);
        self.rec(format!("{c} >> {shown}"));
    }

    fn send_raw(&mut self, c: &str, bytes: &[u8]) {
        self.conn(c).send_bytes(bytes);
        self.rec(format!("{c} >> raw {}", quote(bytes)));
    }

    fn rec_pkt(&mut self, c: &str, p: &Pkt) {
        self.rec(format!("{c} << {p}"));
    }

    /// Receives `n` packets on `c` and records them.
    fn expect(&mut self, c: &str, n: usize) -> Vec<Pkt> {
        self.expect_within(c, n, crate::support::RECV_TIMEOUT)
    }

    fn expect_within(&mut self, c: &str, n: usize, timeout: Duration) -> Vec<Pkt> {
        let ps: Vec<Pkt> = (0..n).map(|_| self.conn(c).recv_packet_within(timeout)).collect();
        for p in &ps {
            self.rec_pkt(c, p);
        }
        ps
    }

    /// Receives `n` packets on `c` and records only their types.
    fn expect_kinds(&mut self, c: &str, n: usize, why: &str) -> Vec<Pkt> {
        let ps: Vec<Pkt> = (0..n).map(|_| self.conn(c).recv_packet()).collect();
        for p in &ps {
            self.rec(format!("{c} << {} (arguments not compared: {why})", p.kind.name()));
        }
        ps
    }

    /// Records every packet that arrived on `c` before an echo round trip.
    fn sync(&mut self, c: &str) -> Vec<Pkt> {
        let ps = self.conn(c).sync();
        for p in &ps {
            self.rec_pkt(c, p);
        }
        self.rec(format!("{c} == synced"));
        ps
    }

    /// Syncs `c` and records only how many packets of `kind` arrived.
    fn count_kind(&mut self, c: &str, kind: T) -> usize {
        let ps = self.conn(c).sync();
        let n = ps.iter().filter(|p| p.kind == kind).count();
        for p in ps.iter().filter(|p| p.kind != kind) {
            self.rec_pkt(c, p);
        }
        n
    }

    /// Sends an admin line (with `\n`) and records the one-line reply.
    fn admin(&mut self, c: &str, line: &str) -> String {
        let mut raw = line.as_bytes().to_vec();
        raw.push(b'\n');
        self.admin_bytes(c, &raw)
    }

    /// Sends raw bytes as an admin request and records the one-line reply.
    fn admin_bytes(&mut self, c: &str, raw: &[u8]) -> String {
        self.conn(c).send_bytes(raw);
        let reply = self.conn(c).recv_line();
        let word = first_word(raw);
        let shown = quote(&normalise_admin_line(&word, &reply));
        self.rec(format!("{c} >> {}", quote(raw)));
        self.rec(format!("{c} << {shown}"));
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// Sends an admin list command and records the reply lines sorted.
    fn admin_list(&mut self, c: &str, line: &str) -> Vec<String> {
        let mut raw = line.as_bytes().to_vec();
        raw.push(b'\n');
        self.conn(c).send_bytes(&raw);
        let mut lines = self.conn(c).recv_admin_list();
        let last = lines.pop().expect("a list reply has a last line");
        let word = first_word(&raw);
        let mut body: Vec<Vec<u8>> = lines.iter().map(|l| normalise_admin_line(&word, l)).collect();
        body.sort_by_key(|l| natural_key(l));
        self.rec(format!("{c} >> {}", quote(&raw)));
        let mut shown: Vec<String> = body.iter().map(|l| self.label_handles(&quote(l))).collect();
        shown.sort();
        for l in shown {
            self.lines.push(format!("{c} << {l}"));
        }
        self.rec(format!("{c} << {}", quote(&last)));
        lines.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect()
    }

    /// Counts the connections the server lists in `workers`.
    fn server_conn_count(&mut self) -> usize {
        self.ctl.send_line("workers");
        self.ctl.recv_admin_list().len() - 1
    }

    /// Waits until the server lists exactly the connections still open here.
    fn wait_for_conn_count(&mut self) {
        let want = self.conns.len() + 1;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.server_conn_count();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server still lists {got} connections, expected {want}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Closes `c` and waits until the server has processed the close.
    fn close(&mut self, c: &str) {
        let conn = self.conns.remove(c).unwrap_or_else(|| panic!("{c} is not open"));
        conn.close();
        self.rec(format!("{c} closed"));
        self.wait_for_conn_count();
    }

    /// Expects the server to close `c`, recording anything sent first.
    fn expect_closed(&mut self, c: &str) {
        let rest = self.conn(c).expect_closed(Duration::from_secs(3));
        self.rec(format!("{c} << {} then closed by the server", quote(&rest)));
        if let Some(conn) = self.conns.remove(c) {
            conn.close();
        }
        self.wait_for_conn_count();
    }
}

/// The lowercased first token of an admin request.
fn first_word(raw: &[u8]) -> String {
    let line = String::from_utf8_lossy(raw);
    line.trim_end_matches(['\r', '\n']).split(' ').next().unwrap_or("").to_ascii_lowercase()
}

/// Masks the fd of `workers` lines, the pid of `getpid` and the version of `version`.
fn normalise_admin_line(word: &str, line: &[u8]) -> Vec<u8> {
    let ending_at = line.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(line.len());
    let (text, ending) = line.split_at(ending_at);
    let mut out = match word {
        "workers" if text != b"." => match text.iter().position(|&b| b == b' ') {
            Some(sp) if text[..sp].iter().all(u8::is_ascii_digit) => {
                [&b"FD"[..], &text[sp..]].concat()
            }
            _ => text.to_vec(),
        },
        "getpid" if text.starts_with(b"OK ") && text[3..].iter().all(u8::is_ascii_digit) => {
            b"OK PID".to_vec()
        }
        "version" if text.starts_with(b"OK ") => b"OK VERSION".to_vec(),
        _ => text.to_vec(),
    };
    out.extend_from_slice(ending);
    out
}

/// Sort key that orders digit runs numerically, so handles sort by counter.
fn natural_key(l: &[u8]) -> Vec<(u8, u64)> {
    let mut key = Vec::new();
    let mut i = 0;
    while i < l.len() {
        if l[i].is_ascii_digit() {
            let mut v: u64 = 0;
            while i < l.len() && l[i].is_ascii_digit() {
                v = v.saturating_mul(10).saturating_add(u64::from(l[i] - b'0'));
                i += 1;
            }
            key.push((0, v));
        } else {
            key.push((1, u64::from(l[i])));
            i += 1;
        }
    }
    key
}

/// Finds the first job handle `H:<host>:<digits>` in `s` (the host part may
/// hold colons).
fn find_handle(s: &str) -> Option<(usize, usize)> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(off) = s[from..].find("H:") {
        let start = from + off;
        from = start + 1;
        if start > 0 && (b[start - 1].is_ascii_alphanumeric()) {
            continue;
        }
        // gearframe's host part holds colons too (`H:host:port:start:N`).
        let host_start = start + 2;
        let mut end = host_start;
        while end < b.len()
            && (b[end].is_ascii_alphanumeric() || matches!(b[end], b'.' | b'-' | b'_' | b':'))
        {
            end += 1;
        }
        let run = &b[host_start..end];
        let Some(colon) = run.iter().rposition(|&c| c == b':') else { continue };
        let digits = &run[colon + 1..];
        if colon > 0 && !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
            return Some((start, end));
        }
    }
    None
}

/// Runs a scenario; a panic becomes the last transcript line.
fn run(addr: SocketAddr, scenario: fn(&mut Session)) -> (Vec<String>, bool) {
    let mut s = Session::new(addr);
    let result = catch_unwind(AssertUnwindSafe(|| scenario(&mut s)));
    let ok = result.is_ok();
    if let Err(e) = result {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into());
        s.lines.push(format!("!! scenario stopped: {msg}"));
    }
    (s.lines, ok)
}

fn gearmand_only() -> bool {
    std::env::var("GEARFRAME_DIFF_GEARMAND_ONLY").is_ok_and(|v| v == "1")
}

/// A line diff (longest common subsequence): `-` gearmand, `+` gearframe.
fn line_diff(a: &[String], b: &[String]) -> String {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] =
                if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push_str(&format!("    {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("  + {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("  - {}\n", a[i]));
            i += 1;
        }
    }
    out
}

/// Runs `scenario` against gearmand and gearframe and compares the transcripts.
fn diff(opts: Opts, scenario: fn(&mut Session)) {
    let Some(gearmand) = Gearmand::start(&opts) else { return };
    let (theirs, ok) = run(gearmand.addr(), scenario);
    drop(gearmand);
    assert!(ok, "the scenario does not run cleanly against gearmand:\n{}", theirs.join("\n"));
    if gearmand_only() {
        eprintln!("gearmand transcript ({opts:?}):\n{}\n", theirs.join("\n"));
        return;
    }
    let ours = Ours::start(&opts);
    let (mine, _) = run(ours.addr(), scenario);
    drop(ours);
    if theirs != mine {
        panic!(
            "transcripts differ ({opts:?}); `-` is gearmand 1.1.20, `+` is gearframe:\n{}",
            line_diff(&theirs, &mine)
        );
    }
}

fn plain(s: fn(&mut Session)) {
    diff(Opts::default(), s);
}

// ---------------------------------------------------------------------------
// Unique-id coalescing
// ---------------------------------------------------------------------------

#[test]
fn coalesce_empty_unique_never_coalesces() {
    plain(|s| {
        s.send("c1", bg(b"f", b"", b"same"));
        s.expect("c1", 1);
        s.send("c1", bg(b"f", b"", b"same"));
        s.expect("c1", 1);
        s.send("c2", fg(b"f", b"", b"same"));
        s.expect("c2", 1);
        s.admin_list("a", "status");
        s.admin_list("a", "show unique jobs");
    });
}

#[test]
fn coalesce_dash_unique_on_identical_data_only() {
    plain(|s| {
        s.send("c1", bg(b"f", b"-", b"payload"));
        s.expect("c1", 1);
        s.note("same data: coalesces");
        s.send("c1", bg(b"f", b"-", b"payload"));
        s.expect("c1", 1);
        s.note("other data: a new job");
        s.send("c1", bg(b"f", b"-", b"other"));
        s.expect("c1", 1);
        s.note("empty data: never coalesces");
        s.send("c1", bg(b"f", b"-", b""));
        s.expect("c1", 1);
        s.send("c1", bg(b"f", b"-", b""));
        s.expect("c1", 1);
        s.note("same data in another function: a new job");
        s.send("c1", bg(b"g", b"-", b"payload"));
        s.expect("c1", 1);
        s.admin_list("a", "status");
        s.admin_list("a", "show unique jobs");
    });
}

#[test]
fn coalesce_same_unique_per_function_only() {
    plain(|s| {
        s.send("c1", bg(b"f", b"u1", b"x"));
        s.expect("c1", 1);
        s.send("c1", bg(b"g", b"u1", b"x"));
        s.expect("c1", 1);
        s.send("c1", bg(b"f", b"u1", b"y"));
        s.expect("c1", 1);
        s.send("c1", bg(b"g", b"u1", b"y"));
        s.expect("c1", 1);
        s.send("c1", bg(b"f", b"u2", b"x"));
        s.expect("c1", 1);
        s.admin_list("a", "status");
        s.admin_list("a", "show jobs");
    });
}

#[test]
fn coalesce_fg_joins_bg_and_bg_joins_fg() {
    plain(|s| {
        s.note("a foreground submission joins a queued background job");
        s.send("c1", bg(b"f", b"u", b"bg-data"));
        s.expect("c1", 1);
        s.send("c2", fg(b"f", b"u", b"fg-data"));
        s.expect("c2", 1);
        s.note("a background submission joins a queued foreground job");
        s.send("c3", fg(b"g", b"v", b"fg-data"));
        s.expect("c3", 1);
        s.send("c4", bg(b"g", b"v", b"bg-data"));
        s.expect("c4", 1);
        s.send("a", Packet::GetStatusUnique { unique: b"u" });
        s.expect("a", 1);
        s.send("a", Packet::GetStatusUnique { unique: b"v" });
        s.expect("a", 1);
        s.admin_list("a", "status");
        s.admin_list("a", "show jobs");
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::CanDo { function: b"g" });
        s.send("w1", Packet::GrabJobUniq);
        let g = s.expect("w1", 1)[0].arg(0).to_vec();
        s.send("w1", Packet::WorkComplete { handle: &g, data: b"g-done" });
        s.expect("c3", 1);
        s.send("w1", Packet::GrabJobUniq);
        let f = s.expect("w1", 1)[0].arg(0).to_vec();
        s.send("w1", Packet::WorkComplete { handle: &f, data: b"f-done" });
        s.expect("c2", 1);
        s.sync("w1");
        s.sync("c1");
        s.sync("c4");
        s.admin_list("a", "status");
    });
}

#[test]
fn coalesce_first_payload_and_priority_win() {
    plain(|s| {
        s.send("c1", fg(b"f", b"u", b"first"));
        s.expect("c1", 1);
        s.send("c2", submit(T::SubmitJobHigh, b"f", b"u", b"second"));
        s.expect("c2", 1);
        s.send("c3", submit(T::SubmitJobLowBg, b"f", b"u", b"third"));
        s.expect("c3", 1);
        s.admin_list("a", "prioritystatus");
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJobUniq);
        s.expect("w1", 1);
        s.send("w1", Packet::WorkComplete { handle: &s.h(1), data: b"done" });
        s.expect("c1", 1);
        s.expect("c2", 1);
        s.sync("c3");
        s.sync("w1");
    });
}

#[test]
fn coalesce_same_connection_attached_twice_gets_results_twice() {
    plain(|s| {
        s.send("c1", fg(b"f", b"u", b"x"));
        s.expect("c1", 1);
        s.send("c1", fg(b"f", b"u", b"x"));
        s.expect("c1", 1);
        s.send("a", Packet::GetStatusUnique { unique: b"u" });
        s.expect("a", 1);
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        let h = s.h(1);
        s.send("w1", Packet::WorkData { handle: &h, data: b"part" });
        s.send("w1", Packet::WorkComplete { handle: &h, data: b"done" });
        s.expect("c1", 4);
        s.sync("c1");
        s.sync("w1");
    });
}

// ---------------------------------------------------------------------------
// Queue order
// ---------------------------------------------------------------------------

#[test]
fn priority_order_within_a_function() {
    plain(|s| {
        s.send("c1", submit(T::SubmitJobLowBg, b"f", b"", b"low-1"));
        s.send("c1", submit(T::SubmitJobBg, b"f", b"", b"normal-1"));
        s.send("c1", submit(T::SubmitJobHighBg, b"f", b"", b"high-1"));
        s.send("c1", submit(T::SubmitJobLow, b"f", b"", b"low-2"));
        s.send("c1", submit(T::SubmitJob, b"f", b"", b"normal-2"));
        s.send("c1", submit(T::SubmitJobHigh, b"f", b"", b"high-2"));
        s.expect("c1", 6);
        s.admin_list("a", "prioritystatus");
        s.send("w1", Packet::CanDo { function: b"f" });
        for _ in 0..7 {
            s.send("w1", Packet::GrabJob);
            s.expect("w1", 1);
        }
        s.admin_list("a", "status");
    });
}

fn newest_registration_first(s: &mut Session) {
    s.send("c1", submit(T::SubmitJobHighBg, b"a", b"", b"a-high"));
    s.send("c1", bg(b"a", b"", b"a-normal"));
    s.send("c1", submit(T::SubmitJobLowBg, b"b", b"", b"b-low-1"));
    s.send("c1", submit(T::SubmitJobLowBg, b"b", b"", b"b-low-2"));
    s.send("c1", bg(b"c", b"", b"c-normal"));
    s.expect("c1", 5);
    s.send("w1", Packet::CanDo { function: b"a" });
    s.send("w1", Packet::CanDo { function: b"b" });
    s.send("w1", Packet::CanDo { function: b"c" });
    s.sync("w1");
    s.admin_list("a", "workers");
    for _ in 0..6 {
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
    }
}

#[test]
fn newest_registration_first_across_functions() {
    plain(newest_registration_first);
}

#[test]
fn round_robin_rotates_functions() {
    diff(Opts { round_robin: true, ..Opts::default() }, newest_registration_first);
}

// ---------------------------------------------------------------------------
// NOOP wake-ups
// ---------------------------------------------------------------------------

#[test]
fn noop_only_to_sleepers_and_once_per_sleep() {
    plain(|s| {
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w2", Packet::CanDo { function: b"f" });
        s.send("w2", Packet::PreSleep);
        s.sync("w1");
        s.sync("w2");
        s.send("c1", bg(b"f", b"", b"1"));
        s.expect("c1", 1);
        s.note("w1 never sent PRE_SLEEP: no NOOP");
        s.sync("w1");
        s.sync("w2");
        s.send("c1", bg(b"f", b"", b"2"));
        s.expect("c1", 1);
        s.note("w2 had its NOOP for this sleep already");
        s.sync("w2");
        for _ in 0..3 {
            s.send("w2", Packet::GrabJob);
            s.expect("w2", 1);
        }
        s.send("w2", Packet::PreSleep);
        s.sync("w2");
        s.send("c1", bg(b"f", b"", b"3"));
        s.expect("c1", 1);
        s.note("a new sleep gets a new NOOP");
        s.sync("w2");
        s.note("a job for another function wakes nobody");
        s.send("c1", bg(b"g", b"", b"4"));
        s.expect("c1", 1);
        s.sync("w1");
        s.sync("w2");
    });
}

#[test]
fn noop_at_once_on_pre_sleep_when_work_exists_but_not_on_can_do() {
    plain(|s| {
        s.send("c1", bg(b"f", b"", b"x"));
        s.expect("c1", 1);
        s.note("registering while a job is queued sends no NOOP");
        s.send("w1", Packet::CanDo { function: b"f" });
        s.sync("w1");
        s.note("PRE_SLEEP with work available: NOOP at once");
        s.send("w1", Packet::PreSleep);
        s.sync("w1");
        s.note("w2 sleeps with nothing to do, then registers f while f has a job");
        s.send("w2", Packet::CanDo { function: b"g" });
        s.send("w2", Packet::PreSleep);
        s.sync("w2");
        s.send("w2", Packet::CanDo { function: b"f" });
        s.sync("w2");
        s.note("w1 was not put to sleep by its PRE_SLEEP, so only w2 wakes now");
        s.send("c1", bg(b"f", b"", b"y"));
        s.expect("c1", 1);
        s.sync("w1");
        s.sync("w2");
    });
}

#[test]
fn worker_wakeup_limits_noops_per_job() {
    diff(Opts { worker_wakeup: 1, ..Opts::default() }, |s| {
        for w in ["w1", "w2", "w3"] {
            s.send(w, Packet::CanDo { function: b"f" });
            s.send(w, Packet::PreSleep);
            s.sync(w);
        }
        let mut total = 0;
        for (i, data) in [b"1", b"2", b"3", b"4"].iter().enumerate() {
            s.send("c1", bg(b"f", b"", *data));
            s.expect("c1", 1);
            for w in ["w1", "w2", "w3"] {
                total += s.count_kind(w, T::Noop);
            }
            s.note(&format!("NOOPs sent to w1+w2+w3 after job {}: {total}", i + 1));
        }
    });
}

// ---------------------------------------------------------------------------
// Grabbing
// ---------------------------------------------------------------------------

#[test]
fn grab_reply_types() {
    plain(|s| {
        s.send("w0", Packet::GrabJob);
        s.expect("w0", 1);
        s.send("c1", bg(b"f", b"u1", b"d1"));
        s.send("c1", bg(b"f", b"u2", b"d2"));
        s.send("c1", bg(b"f", b"u3", b"d3"));
        s.send(
            "c1",
            Packet::SubmitReduceJob {
                background: true,
                function: b"f",
                unique: b"u4",
                reducer: b"red",
                aggregator: b"",
                data: b"d4",
            },
        );
        s.send(
            "c1",
            Packet::SubmitReduceJob {
                background: true,
                function: b"f",
                unique: b"u5",
                reducer: b"red",
                aggregator: b"",
                data: b"d5",
            },
        );
        s.expect("c1", 5);
        s.note("a worker without registrations gets NO_JOB");
        s.send("w0", Packet::GrabJobAll);
        s.expect("w0", 1);
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        s.send("w1", Packet::GrabJobUniq);
        s.expect("w1", 1);
        s.note("GRAB_JOB_ALL without a reducer: JOB_ASSIGN_UNIQ");
        s.send("w1", Packet::GrabJobAll);
        s.expect("w1", 1);
        s.send("w1", Packet::GrabJobAll);
        s.expect("w1", 1);
        s.note("a reduce job grabbed with GRAB_JOB_UNIQ");
        s.send("w1", Packet::GrabJobUniq);
        s.expect("w1", 1);
        for p in [Packet::GrabJob, Packet::GrabJobUniq, Packet::GrabJobAll] {
            s.send("w1", p);
            s.expect("w1", 1);
        }
    });
}

// ---------------------------------------------------------------------------
// Requeue
// ---------------------------------------------------------------------------

#[test]
fn requeue_on_worker_disconnect_to_the_tail() {
    plain(|s| {
        s.send("c1", fg(b"f", b"", b"j1"));
        s.expect("c1", 1);
        s.send("c2", bg(b"f", b"", b"j2"));
        s.expect("c2", 1);
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        let h1 = s.h(1);
        s.send("w1", Packet::WorkStatus { handle: &h1, numerator: b"1", denominator: b"2" });
        s.expect("c1", 1);
        s.send("a", Packet::GetStatus { handle: &h1 });
        s.expect("a", 1);
        s.admin_list("a", "status");
        s.close("w1");
        s.admin_list("a", "status");
        s.admin_list("a", "show jobs");
        s.note("the requeue resets the status numbers and tells the client nothing");
        s.send("a", Packet::GetStatus { handle: &h1 });
        s.expect("a", 1);
        s.sync("c1");
        s.send("w2", Packet::CanDo { function: b"f" });
        s.send("w2", Packet::GrabJob);
        s.expect("w2", 1);
        s.send("w2", Packet::GrabJob);
        s.expect("w2", 1);
        s.send("w2", Packet::WorkComplete { handle: &h1, data: b"ok" });
        s.expect("c1", 1);
        s.sync("w2");
        s.admin_list("a", "status");
    });
}

#[test]
fn requeue_on_cant_do_and_reset_abilities() {
    plain(|s| {
        s.send("c1", fg(b"f", b"", b"x"));
        s.expect("c1", 1);
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::CanDo { function: b"g" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        let h = s.h(1);
        s.admin_list("a", "status");
        s.send("w1", Packet::CantDo { function: b"f" });
        s.sync("w1");
        s.admin_list("a", "status");
        s.admin_list("a", "show jobs");
        s.admin_list("a", "workers");
        s.note("the old owner's result is refused after the requeue");
        s.send("w1", Packet::WorkComplete { handle: &h, data: b"late" });
        s.expect("w1", 1);
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        s.send("w1", Packet::ResetAbilities);
        s.sync("w1");
        s.admin_list("a", "status");
        s.admin_list("a", "show jobs");
        s.admin_list("a", "workers");
        s.send("w1", Packet::WorkFail { handle: &h });
        s.expect("w1", 1);
        s.sync("c1");
        s.send("w2", Packet::CanDo { function: b"f" });
        s.send("w2", Packet::GrabJob);
        s.expect("w2", 1);
        s.send("w2", Packet::WorkComplete { handle: &h, data: b"ok" });
        s.expect("c1", 1);
    });
}

#[test]
fn job_retries_two_drops_after_the_second_worker_dies() {
    diff(Opts { job_retries: 2, ..Opts::default() }, |s| {
        s.send("c1", fg(b"f", b"", b"x"));
        s.expect("c1", 1);
        s.send("c2", bg(b"f", b"", b"y"));
        s.expect("c2", 1);
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        s.close("w1");
        s.admin_list("a", "show jobs");
        s.admin_list("a", "status");
        s.sync("c1");
        s.send("w2", Packet::CanDo { function: b"f" });
        s.send("w2", Packet::GrabJob);
        s.expect("w2", 1);
        s.send("w2", Packet::GrabJob);
        s.expect("w2", 1);
        s.close("w2");
        s.note("the foreground job is dropped and its client told");
        s.expect("c1", 1);
        s.sync("c1");
        s.admin_list("a", "show jobs");
        s.admin_list("a", "status");
    });
}

#[test]
fn can_do_timeout_requeues_to_another_worker() {
    plain(|s| {
        s.send("c1", fg(b"f", b"", b"x"));
        s.expect("c1", 1);
        s.send("w1", Packet::CanDoTimeout { function: b"f", timeout: b"1000" });
        s.send("w1", Packet::GrabJob);
        let started = Instant::now();
        s.expect("w1", 1);
        let h = s.h(1);
        s.send("w2", Packet::CanDo { function: b"f" });
        s.send("w2", Packet::PreSleep);
        s.sync("w2");
        s.note("the timeout requeues the job, which wakes the sleeping w2");
        s.expect_within("w2", 1, Duration::from_secs(5));
        let waited = started.elapsed();
        s.note(&format!("requeued after at least 0.9 s: {}", waited >= Duration::from_millis(900)));
        s.note(&format!("requeued within 3 s: {}", waited <= Duration::from_secs(3)));
        s.admin_list("a", "status");
        s.admin_list("a", "show jobs");
        // gearmand 1.1.20 runs the timeout on w1's I/O thread: until w1's
        // connection is served again, a GRAB right after the NOOP may get
        // NO_JOB although `status` counts the job as queued. The echo on w1
        // makes the order deterministic.
        s.sync("w1");
        s.send("w2", Packet::GrabJob);
        s.expect("w2", 1);
        s.sync("c1");
        s.send("w1", Packet::WorkComplete { handle: &h, data: b"late" });
        s.expect("w1", 1);
        s.send("w2", Packet::WorkComplete { handle: &h, data: b"ok" });
        s.expect("c1", 1);
        s.sync("w2");
    });
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

#[test]
fn work_packets_are_forwarded_to_foreground_clients() {
    plain(|s| {
        s.send("c1", fg(b"f", b"u", b"x"));
        s.expect("c1", 1);
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        let h = s.h(1);
        s.send("w1", Packet::WorkStatus { handle: &h, numerator: b"1", denominator: b"4" });
        s.send("w1", Packet::WorkData { handle: &h, data: b"part\0with nul" });
        s.send("w1", Packet::WorkWarning { handle: &h, data: b"careful" });
        s.expect("c1", 3);
        s.note("a late joiner only gets what is forwarded after it joined");
        s.send("c2", fg(b"f", b"u", b"ignored"));
        s.expect("c2", 1);
        s.sync("c2");
        s.note("status strings are forwarded verbatim and stored as integers");
        s.send("w1", Packet::WorkStatus { handle: &h, numerator: b"5x", denominator: b"abc" });
        s.expect("c1", 1);
        s.expect("c2", 1);
        s.send("a", Packet::GetStatus { handle: &h });
        s.expect("a", 1);
        s.send("w1", Packet::WorkComplete { handle: &h, data: b"done\0!" });
        s.expect("c1", 1);
        s.expect("c2", 1);
        s.sync("w1");
        s.send("a", Packet::GetStatus { handle: &h });
        s.expect("a", 1);
        s.note("a background job's results go nowhere; its status is kept");
        s.send("c1", bg(b"f", b"", b"b"));
        s.expect("c1", 1);
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        let h2 = s.h(2);
        s.send("w1", Packet::WorkData { handle: &h2, data: b"d" });
        s.send("w1", Packet::WorkStatus { handle: &h2, numerator: b"3", denominator: b"7" });
        s.sync("w1");
        s.send("a", Packet::GetStatus { handle: &h2 });
        s.expect("a", 1);
        s.send("w1", Packet::WorkComplete { handle: &h2, data: b"r" });
        s.sync("w1");
        s.sync("c1");
        s.sync("c2");
        s.admin_list("a", "status");
    });
}

#[test]
fn exceptions_only_to_clients_with_the_option() {
    plain(|s| {
        s.send("c1", Packet::OptionReq { option: b"exceptions" });
        s.expect("c1", 1);
        s.send("c3", Packet::OptionReq { option: b"EXCEPTIONS" });
        s.expect("c3", 1);
        s.send("c1", fg(b"f", b"u", b"x"));
        s.expect("c1", 1);
        s.send("c2", fg(b"f", b"u", b"x"));
        s.expect("c2", 1);
        s.send("c3", fg(b"f", b"u", b"x"));
        s.expect("c3", 1);
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        let h = s.h(1);
        s.send("w1", Packet::WorkException { handle: &h, data: b"boom\0trace" });
        s.expect("c1", 1);
        s.expect("c3", 1);
        s.expect_kinds("c2", 1, "gearmand appends a NUL to the handle, gearframe does not");
        s.sync("c2");
        s.note("the exception ends the job");
        s.send("w1", Packet::WorkComplete { handle: &h, data: b"late" });
        s.expect("w1", 1);
        s.admin_list("a", "status");
    });
}

#[test]
fn option_req_unknown_option() {
    plain(|s| {
        s.send("c1", Packet::OptionReq { option: b"nosuchoption" });
        s.expect("c1", 1);
        s.send("c1", Packet::OptionReq { option: b"" });
        s.expect("c1", 1);
        s.send("c1", Packet::OptionReq { option: b"exceptions" });
        s.expect("c1", 1);
        s.sync("c1");
    });
}

#[test]
fn maxqueue_and_queue_error() {
    plain(|s| {
        s.admin("a", "maxqueue f 1");
        s.send("c1", bg(b"f", b"u1", b"x"));
        s.expect("c1", 1);
        s.send("c1", bg(b"f", b"u2", b"y"));
        s.expect("c1", 1);
        s.note("coalescing is exempt");
        s.send("c1", bg(b"f", b"u1", b"z"));
        s.expect("c1", 1);
        s.send("c1", fg(b"f", b"", b"fg"));
        s.expect("c1", 1);
        s.note("running jobs count too");
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        s.send("c1", bg(b"f", b"u3", b"x"));
        s.expect("c1", 1);
        s.note("per priority limits: high 2, normal 1, low unlimited");
        s.admin("a", "maxqueue f 2 1");
        s.send("c1", submit(T::SubmitJobHighBg, b"f", b"h1", b"x"));
        s.expect("c1", 1);
        s.send("c1", submit(T::SubmitJobHighBg, b"f", b"h2", b"x"));
        s.expect("c1", 1);
        s.send("c1", bg(b"f", b"n1", b"x"));
        s.expect("c1", 1);
        s.send("c1", submit(T::SubmitJobLowBg, b"f", b"l1", b"x"));
        s.expect("c1", 1);
        s.note("three limits, then garbage and negatives (unlimited)");
        s.admin("a", "maxqueue f 9 9 3");
        s.send("c1", submit(T::SubmitJobLowBg, b"f", b"l2", b"x"));
        s.expect("c1", 1);
        s.admin("a", "maxqueue f -1 x 2");
        s.send("c1", submit(T::SubmitJobHighBg, b"f", b"h3", b"x"));
        s.expect("c1", 1);
        s.send("c1", submit(T::SubmitJobLowBg, b"f", b"l3", b"x"));
        s.expect("c1", 1);
        s.admin("a", "maxqueue f");
        s.send("c1", submit(T::SubmitJobLowBg, b"f", b"l4", b"x"));
        s.expect("c1", 1);
        s.admin("a", "maxqueue nosuchfunction 5");
        s.admin("a", "maxqueue");
        s.admin("a", "MAXQUEUE f 1 2 3");
        s.admin_list("a", "status");
        s.admin_list("a", "prioritystatus");
    });
}

#[test]
fn cancel_job_fails_attached_clients() {
    plain(|s| {
        s.send("c1", fg(b"f", b"", b"x"));
        s.expect("c1", 1);
        s.send("c2", bg(b"f", b"", b"y"));
        s.expect("c2", 1);
        let (h1, h2) = (s.h(1), s.h(2));
        let cancel1 = format!("cancel job {}", String::from_utf8_lossy(&h1));
        let cancel2 = format!("cancel job {}", String::from_utf8_lossy(&h2));
        s.admin("a", &cancel1);
        s.expect("c1", 1);
        s.sync("c1");
        // What the listings say of the cancelled job differs: see
        // ours_a_cancelled_queued_job_is_gone_at_once.
        s.note("a cancelled queued job is never handed out");
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        s.admin_list("a", "status");
        s.admin_list("a", "show jobs");
        s.note("cancelling a running job does not stop it");
        s.admin("a", &cancel2);
        s.admin_list("a", "show jobs");
        s.send("w1", Packet::WorkComplete { handle: &h2, data: b"done" });
        s.sync("w1");
        s.admin_list("a", "status");
        s.admin("a", &cancel2);
        s.sync("c1");
        s.sync("c2");
    });
}

#[test]
fn drop_function_rules() {
    plain(|s| {
        s.send("w1", Packet::CanDo { function: b"f" });
        s.sync("w1");
        s.admin_bytes("a", b"create function idle\r\n");
        s.admin_list("a", "status");
        s.admin("a", "drop function f");
        s.admin("a", "drop function nosuch");
        s.admin("a", "drop function idle");
        s.admin_list("a", "status");
        s.admin("a", "drop function");
        s.admin("a", "drop function a b");
        s.admin("a", "drop functions f");
        s.admin("a", "drop");
        s.close("w1");
        s.admin_list("a", "status");
        s.admin("a", "drop function f");
        s.admin_list("a", "status");
        s.note("a function with a running job cannot be dropped");
        s.send("c1", fg(b"g", b"", b"x"));
        s.expect("c1", 1);
        s.send("w2", Packet::CanDo { function: b"g" });
        s.send("w2", Packet::GrabJob);
        s.expect("w2", 1);
        s.send("w3", Packet::CanDo { function: b"h" });
        s.sync("w3");
        s.admin("a", "drop function g");
        s.admin_list("a", "status");
    });
}

#[test]
fn cancel_job_then_grab_reaps_it() {
    plain(|s| {
        s.send("c1", fg(b"f", b"", b"x"));
        s.expect("c1", 1);
        let cancel = format!("cancel job {}", String::from_utf8_lossy(&s.h(1)));
        s.admin("a", &cancel);
        s.expect("c1", 1);
        s.note("the cancelled job is never handed out and is gone once a worker reaches it");
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        s.admin("a", &cancel);
        s.sync("c1");
    });
}

#[test]
fn client_disconnect_abandons_its_jobs() {
    plain(|s| {
        s.send("c1", fg(b"f", b"", b"running"));
        s.expect("c1", 1);
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        s.send("c1", fg(b"f", b"", b"queued"));
        s.expect("c1", 1);
        s.send("c2", bg(b"f", b"", b"background"));
        s.expect("c2", 1);
        s.close("c1");
        s.note("the running job goes on and its results are accepted silently");
        let h1 = s.h(1);
        s.send("w1", Packet::WorkStatus { handle: &h1, numerator: b"1", denominator: b"2" });
        s.send("w1", Packet::WorkData { handle: &h1, data: b"d" });
        s.send("w1", Packet::WorkComplete { handle: &h1, data: b"done" });
        s.sync("w1");
        s.note("the abandoned queued job is never handed out");
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        s.send("w1", Packet::WorkComplete { handle: &s.h(3), data: b"done" });
        s.sync("w1");
        s.sync("c2");
        s.admin_list("a", "status");
        s.admin_list("a", "show jobs");
    });
}

#[test]
fn epoch_jobs_wait_until_due() {
    plain(|s| {
        s.send("w1", Packet::CanDo { function: b"f" });
        s.sync("w1");
        s.send(
            "c1",
            Packet::SubmitJobEpoch {
                function: b"f",
                unique: b"e1",
                epoch: FAR_FUTURE,
                data: b"later",
            },
        );
        s.expect("c1", 1);
        s.send("w1", Packet::GrabJobUniq);
        s.expect("w1", 1);
        s.admin_list("a", "status");
        s.admin_list("a", "prioritystatus");
        s.admin_list("a", "show jobs");
        s.send("a", Packet::GetStatus { handle: &s.h(1) });
        s.expect("a", 1);
        s.note("a job that is not due does not stop a worker from sleeping");
        s.send("w1", Packet::PreSleep);
        s.sync("w1");
        s.note("an epoch in the past (or 0) is runnable at once");
        s.send(
            "c1",
            Packet::SubmitJobEpoch { function: b"f", unique: b"e2", epoch: b"1", data: b"past" },
        );
        s.expect("c1", 1);
        s.sync("w1");
        s.send(
            "c1",
            Packet::SubmitJobEpoch { function: b"f", unique: b"e3", epoch: b"0", data: b"zero" },
        );
        s.expect("c1", 1);
        for _ in 0..3 {
            s.send("w1", Packet::GrabJobUniq);
            s.expect("w1", 1);
        }
        s.admin_list("a", "status");
    });
}

#[test]
fn length_limits_of_unique_and_handle() {
    plain(|s| {
        let u63 = [b'u'; 63];
        let u65 = [b'u'; 65];
        s.send("c1", bg(b"f", &u63, b"x"));
        s.expect("c1", 1);
        s.send("c1", bg(b"f", &u63, b"y"));
        s.expect("c1", 1);
        s.send("c1", bg(b"f", &u65, b"x"));
        s.expect("c1", 1);
        s.admin_list("a", "show unique jobs");
        s.admin_list("a", "status");
        s.send("c1", Packet::GetStatusUnique { unique: &u63 });
        s.expect("c1", 1);
        s.note("a result for a handle of 64 bytes or more");
        s.send("w1", Packet::WorkFail { handle: &[b'h'; 64] });
        s.expect("w1", 1);
        s.send("w1", Packet::WorkFail { handle: &[b'h'; 63] });
        s.expect("w1", 1);
        s.send("w1", Packet::WorkComplete { handle: &[b'h'; 64], data: b"x" });
        s.expect("w1", 1);
        s.sync("w1");
    });
}

// gearmand quirks that a compatible server may fix; not run by default.
// Run them with `cargo test --test it diff::quirk -- --ignored` to compare.

// gearmand queues a not-yet-due epoch job like any other and wakes sleepers
// at once, although a GRAB then finds nothing.
#[test]
#[ignore = "gearmand quirk: NOOP for an epoch job that is not due"]
fn quirk_future_epoch_job_wakes_sleepers_at_submit() {
    plain(|s| {
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::PreSleep);
        s.sync("w1");
        s.send(
            "c1",
            Packet::SubmitJobEpoch { function: b"f", unique: b"", epoch: FAR_FUTURE, data: b"x" },
        );
        s.expect("c1", 1);
        s.sync("w1");
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
    });
}

// gearmand's take looks only at the highest non-empty priority list of a
// function; when that list holds only epoch jobs that are not due, a LOW job
// of the same function is never handed out, while PRE_SLEEP's peek does see
// it and answers NOOP at once (a wake-up loop).
#[test]
#[ignore = "gearmand quirk: a future epoch job starves lower priorities"]
fn quirk_future_epoch_job_starves_lower_priorities() {
    plain(|s| {
        s.send(
            "c1",
            Packet::SubmitJobEpoch { function: b"f", unique: b"", epoch: FAR_FUTURE, data: b"x" },
        );
        s.send("c1", submit(T::SubmitJobLowBg, b"f", b"", b"low"));
        s.expect("c1", 2);
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        s.send("w1", Packet::PreSleep);
        s.sync("w1");
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
    });
}

// ---------------------------------------------------------------------------
// Status queries, echo, client ids
// ---------------------------------------------------------------------------

#[test]
fn get_status_and_get_status_unique() {
    plain(|s| {
        s.send("q", Packet::GetStatus { handle: b"nosuchhandle" });
        s.expect("q", 1);
        s.send("q", Packet::GetStatusUnique { unique: b"nosuchunique" });
        s.expect("q", 1);
        s.send("c1", fg(b"f", b"u1", b"x"));
        s.expect("c1", 1);
        s.send("c2", bg(b"f", b"u2", b"x"));
        s.expect("c2", 1);
        let (h1, h2) = (s.h(1), s.h(2));
        s.note("queued");
        s.send("q", Packet::GetStatus { handle: &h1 });
        s.send("q", Packet::GetStatusUnique { unique: b"u1" });
        s.send("q", Packet::GetStatus { handle: &h2 });
        s.send("q", Packet::GetStatusUnique { unique: b"u2" });
        s.expect("q", 4);
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        s.send("w1", Packet::WorkStatus { handle: &h1, numerator: b"3", denominator: b"10" });
        s.expect("c1", 1);
        s.note("running");
        s.send("q", Packet::GetStatus { handle: &h1 });
        s.send("q", Packet::GetStatusUnique { unique: b"u1" });
        s.expect("q", 2);
        s.send("w1", Packet::WorkComplete { handle: &h1, data: b"" });
        s.expect("c1", 1);
        s.note("finished");
        s.send("q", Packet::GetStatus { handle: &h1 });
        s.send("q", Packet::GetStatusUnique { unique: b"u1" });
        s.expect("q", 2);
    });
}

#[test]
fn echo_round_trip() {
    plain(|s| {
        s.send("c1", Packet::EchoReq { data: b"hello" });
        s.expect("c1", 1);
        s.send("c1", Packet::EchoReq { data: b"" });
        s.expect("c1", 1);
        s.send("c1", Packet::EchoReq { data: b"a\0b\xff\r\n" });
        s.expect("c1", 1);
        s.admin("c1", "version");
        s.send("c1", Packet::EchoReq { data: b"after text" });
        s.expect("c1", 1);
    });
}

#[test]
fn set_client_id_shown_by_workers() {
    plain(|s| {
        s.send("w1", Packet::SetClientId { id: b"worker-1" });
        s.send("w1", Packet::CanDo { function: b"a" });
        s.send("w1", Packet::CanDo { function: b"b" });
        s.send("w1", Packet::CanDo { function: b"b" });
        s.sync("w1");
        s.send("w2", Packet::SetClientId { id: b"first" });
        s.send("w2", Packet::SetClientId { id: b"second" });
        s.send("w2", Packet::CanDoTimeout { function: b"t", timeout: b"5000" });
        s.sync("w2");
        s.send("w3", Packet::SetClientId { id: &[b'x'; 200] });
        s.sync("w3");
        s.send("c1", fg(b"a", b"", b"x"));
        s.expect("c1", 1);
        s.admin_list("a", "workers");
        s.admin_list("a", "status");
        s.send("w1", Packet::CantDo { function: b"b" });
        s.sync("w1");
        s.admin_list("a", "workers");
    });
}

#[test]
fn results_for_a_handle_not_assigned_here_are_refused() {
    plain(|s| {
        s.send("c1", fg(b"f", b"", b"x"));
        s.expect("c1", 1);
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        let h = s.h(1);
        for (w, handle) in [("w2", h.as_slice()), ("w1", b"nosuchhandle".as_slice())] {
            s.note(&format!("{w} sends results for {}", String::from_utf8_lossy(handle)));
            s.send(w, Packet::WorkStatus { handle, numerator: b"1", denominator: b"2" });
            s.send(w, Packet::WorkData { handle, data: b"d" });
            s.send(w, Packet::WorkWarning { handle, data: b"w" });
            s.send(w, Packet::WorkException { handle, data: b"e" });
            s.send(w, Packet::WorkFail { handle });
            s.send(w, Packet::WorkComplete { handle, data: b"c" });
            s.expect(w, 6);
            s.sync(w);
        }
        s.sync("c1");
        s.send("w1", Packet::WorkComplete { handle: &h, data: b"ok" });
        s.expect("c1", 1);
        s.sync("w1");
    });
}

#[test]
fn packets_not_expected_by_a_server_are_refused() {
    plain(|s| {
        for t in [6u32, 8, 10, 11, 17, 19, 20, 27, 31, 40, 42, 5, 24, 35] {
            let argc = T::from_u32(t).map_or(0, |k| k.arg_count());
            let body: Vec<u8> =
                (0..argc).map(|i| format!("{i}")).collect::<Vec<_>>().join("\0").into_bytes();
            s.send_raw("c1", &raw_packet(b"\0REQ", t, &body));
            s.expect("c1", 1);
        }
        s.note("a response magic on a request");
        s.send_raw("c1", &raw_packet(b"\0RES", 16, b"x"));
        s.expect("c1", 1);
        s.note("the connection stays usable");
        s.send("c1", Packet::EchoReq { data: b"still here" });
        s.expect("c1", 1);
        s.sync("c1");
    });
}

// ---------------------------------------------------------------------------
// Admin text protocol
// ---------------------------------------------------------------------------

#[test]
fn admin_list_commands_exact_bytes() {
    plain(|s| {
        s.send("w1", Packet::SetClientId { id: b"w-1" });
        s.send("w1", Packet::CanDo { function: b"rev" });
        s.send("w1", Packet::CanDo { function: b"other" });
        s.sync("w1");
        s.send("c1", submit(T::SubmitJobHighBg, b"rev", b"u1", b"x"));
        s.send("c1", bg(b"rev", b"", b"y"));
        s.send("c1", submit(T::SubmitJobLow, b"rev", b"-", b"z"));
        s.send("c1", bg(b"other", b"u1", b"x"));
        s.expect("c1", 4);
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        for cmd in [
            "workers",
            "WORKERS",
            "status",
            "Status extra args",
            "status a b c d",
            "prioritystatus",
            "PRIORITYSTATUS",
            "show jobs",
            "SHOW JOBS",
            "show  jobs",
            "show unique jobs",
            "Show Unique Jobs",
        ] {
            s.admin_list("a", cmd);
        }
        s.note("list commands mixed into a binary connection");
        s.admin_list("c1", "status");
        s.send("c1", Packet::EchoReq { data: b"x" });
        s.expect("c1", 1);
    });
}

#[test]
fn admin_single_line_commands_exact_bytes() {
    plain(|s| {
        for cmd in [
            "getpid",
            "GETPID now",
            "verbose",
            "VERBOSE",
            "version",
            "Version x",
            "foo",
            "foo bar",
            "",
            " status",
            "status\tx",
            "show",
            "show x",
            "show jobs now",
            "show unique",
            "show unique x",
            "SHOW X",
            "cancel",
            "cancel job",
            "cancel job nosuchhandle",
            "cancel job a b",
            "cancel jobs x",
            "CANCEL JOB nosuchhandle",
            "create",
            "create function",
            "create function a b",
            "create functions x",
            "drop",
            "drop function",
            "drop function nosuch",
            "drop function a b",
            "maxqueue",
            "maxqueue f",
            "maxqueue f 1",
            "maxqueue f 1 2",
            "maxqueue f 1 2 3",
        ] {
            s.admin("a", cmd);
        }
        s.note("carriage return line endings");
        s.admin_bytes("a", b"version\r\n");
        s.admin_bytes("a", b"foo\r\n");
        s.admin_bytes("a", b"\r\n");
        s.admin_bytes("a", b"create function crlf\r\n");
        s.admin_bytes("a", b"drop function crlf\r\n");
        s.admin_bytes("a", b"create function crlf2\r\n");
        s.admin_list("a", "status");
        s.note("five tokens are fine, six close the connection without a reply");
        s.admin_list("a", "status 1 2 3 4");
        s.conn("six").send_line("status 1 2 3 4 5");
        s.rec("six >> \"status 1 2 3 4 5\\n\"".into());
        s.expect_closed("six");
        s.conn("six2").send_line("a b c d e f");
        s.rec("six2 >> \"a b c d e f\\n\"".into());
        s.expect_closed("six2");
        s.admin_list("a", "workers");
    });
}

// ---------------------------------------------------------------------------
// gearframe's deliberate differences from gearmand, checked on gearframe alone
// ---------------------------------------------------------------------------

/// Starts gearframe's server unless this run is restricted to gearmand.
fn ours(opts: Opts) -> Option<Ours> {
    if gearmand_only() {
        eprintln!("GEARFRAME_DIFF_GEARMAND_ONLY=1: gearframe-only test skipped");
        return None;
    }
    Some(Ours::start(&opts))
}

fn ours_session(opts: Opts, scenario: fn(&mut Session)) -> Vec<String> {
    let Some(server) = ours(opts) else { return Vec::new() };
    let (lines, ok) = run(server.addr(), scenario);
    drop(server);
    assert!(ok, "scenario failed against gearframe:\n{}", lines.join("\n"));
    lines
}

/// Asserts that `want` appears in the transcript, in order, as whole lines.
fn assert_in_order(lines: &[String], want: &[&str]) {
    if lines.is_empty() {
        return;
    }
    let mut it = lines.iter();
    for w in want {
        assert!(
            it.any(|l| l == w),
            "missing (or out of order) line {w:?} in gearframe's transcript:\n{}",
            lines.join("\n")
        );
    }
}

// gearmand sends `handle\0` when it turns a WORK_EXCEPTION into WORK_FAIL for
// a client without the exceptions option; that breaks handle lookups in
// clients, so gearframe sends the bare handle.
#[test]
fn ours_work_fail_from_exception_has_the_bare_handle() {
    let lines = ours_session(Opts::default(), |s| {
        s.send("c1", fg(b"f", b"", b"x"));
        s.expect("c1", 1);
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
        s.send("w1", Packet::WorkException { handle: &s.h(1), data: b"boom" });
        s.expect("c1", 1);
        s.sync("c1");
    });
    assert_in_order(
        &lines,
        &["c1 << JOB_CREATED \"H1\"", "c1 << WORK_FAIL \"H1\"", "c1 == synced"],
    );
}

// gearmand drops the last character of the name when the line ends in a bare
// `\n`; gearframe creates the function named on the line.
#[test]
fn ours_create_function_keeps_the_whole_name() {
    let lines = ours_session(Opts::default(), |s| {
        s.admin_bytes("a", b"create function abc\n");
        s.admin_list("a", "status");
    });
    assert_in_order(&lines, &["a << \"OK\\r\\n\"", "a << \"abc\\t0\\t0\\t0\\n\"", "a << \".\\n\""]);
    assert!(!lines.iter().any(|l| l.contains("\"ab\\t")), "{}", lines.join("\n"));
}

// gearmand frees a function that still has queued jobs (the jobs then point
// at freed memory); gearframe refuses the drop while jobs are queued.
#[test]
fn ours_drop_function_refuses_while_jobs_are_queued() {
    let lines = ours_session(Opts::default(), |s| {
        s.send("c1", bg(b"f", b"", b"x"));
        s.expect("c1", 1);
        let reply = s.admin("a", "drop function f");
        assert!(reply.starts_with("ERR ") && reply.ends_with("\r\n"), "reply {reply:?}");
        s.admin_list("a", "status");
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
    });
    assert_in_order(&lines, &["a << \"f\\t1\\t0\\t0\\n\"", "w1 << JOB_ASSIGN \"H1\" \"f\" \"x\""]);
}

// gearmand has no timer for epoch jobs: a sleeping worker only learns about a
// job that became due on its next GRAB. gearframe wakes it with a NOOP.
#[test]
fn ours_epoch_job_wakes_a_sleeping_worker_when_due() {
    let lines = ours_session(Opts::default(), |s| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let when = (now + 2).to_string();
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::PreSleep);
        s.sync("w1");
        s.send(
            "c1",
            Packet::SubmitJobEpoch {
                function: b"f",
                unique: b"",
                epoch: when.as_bytes(),
                data: b"later",
            },
        );
        s.expect("c1", 1);
        s.note("not due yet: no NOOP");
        s.sync("w1");
        s.expect_within("w1", 1, Duration::from_secs(6));
        s.send("w1", Packet::GrabJob);
        s.expect("w1", 1);
    });
    assert_in_order(
        &lines,
        &[
            "-- not due yet: no NOOP",
            "w1 == synced",
            "w1 << NOOP",
            "w1 << JOB_ASSIGN \"H1\" \"f\" \"later\"",
        ],
    );
}

// gearmand keeps scanning the following bytes for the missing NULs and
// desynchronises; gearframe reads exactly `size` bytes, answers ERROR and
// closes the connection.
#[test]
fn ours_submit_with_too_few_nuls_gets_error_and_close() {
    let lines = ours_session(Opts::default(), |s| {
        s.send_raw("c1", &raw_packet(b"\0REQ", 7, b"f\0data"));
        s.send("c1", Packet::EchoReq { data: b"after" });
        let p = s.conn("c1").recv_packet();
        s.rec_pkt("c1", &p);
        assert_eq!(p.kind, T::Error, "expected ERROR, got {p}");
        s.expect_closed("c1");
        s.admin_list("a", "status");
    });
    assert!(!lines.iter().any(|l| l.contains("ECHO_RES")), "{}", lines.join("\n"));
    assert!(!lines.iter().any(|l| l.contains("JOB_CREATED")), "{}", lines.join("\n"));
}

// gearmand prints its own version; gearframe names itself.
#[test]
fn ours_version_names_gearframe() {
    let Some(server) = ours(Opts::default()) else { return };
    let mut c = RawConn::connect(server.addr(), "a");
    c.send_line("version");
    let want = format!("OK gearframe-{}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(String::from_utf8_lossy(&c.recv_line()), want);
}

// gearmand does not record a background submission that coalesced into a
// foreground job, so the job is abandoned (never run) when the foreground
// client disconnects. gearframe keeps it: the background submitter owns it.
#[test]
fn ours_bg_coalesced_into_fg_survives_the_fg_client() {
    let lines = ours_session(Opts::default(), |s| {
        s.send("c1", fg(b"f", b"u", b"x"));
        s.expect("c1", 1);
        s.send("c2", bg(b"f", b"u", b"y"));
        s.expect("c2", 1);
        s.close("c1");
        s.admin_list("a", "show jobs");
        s.send("w1", Packet::CanDo { function: b"f" });
        s.send("w1", Packet::GrabJobUniq);
        s.expect("w1", 1);
    });
    assert_in_order(&lines, &["c1 closed", "w1 << JOB_ASSIGN_UNIQ \"H1\" \"f\" \"u\" \"x\""]);
}

// gearmand keeps a cancelled queued job listed, counted in `status` and
// known to GET_STATUS until a worker reaches it; gearframe removes it at once.
#[test]
fn ours_a_cancelled_queued_job_is_gone_at_once() {
    let lines = ours_session(Opts::default(), |s| {
        s.send("c1", fg(b"f", b"", b"x"));
        s.expect("c1", 1);
        s.send("c2", bg(b"f", b"", b"y"));
        s.expect("c2", 1);
        let h1 = s.h(1);
        s.admin("a", &format!("cancel job {}", String::from_utf8_lossy(&h1)));
        s.expect("c1", 1);
        s.sync("c1");
        s.admin_list("a", "status");
        s.admin_list("a", "show jobs");
        s.send("a", Packet::GetStatus { handle: &h1 });
        s.expect("a", 1);
    });
    assert_in_order(
        &lines,
        &[
            "c1 << WORK_FAIL \"H1\"",
            "a << \"f\\t1\\t0\\t0\\n\"",
            "a >> \"show jobs\\n\"",
            "a << \"H2\\t0\\t0\\t1\\n\"",
            "a << \".\\n\"",
            "a << STATUS_RES \"H1\" \"0\" \"0\" \"0\" \"0\"",
        ],
    );
    assert!(!lines.iter().any(|l| l.contains("<< \"H1\\t")), "{lines:#?}");
}

// gearmand answers a second `cancel job` for a cancelled job that no worker
// has reached yet with another WORK_FAIL to the clients it already failed;
// gearframe tells each client once.
#[test]
fn ours_cancel_fails_each_client_once() {
    let lines = ours_session(Opts::default(), |s| {
        s.send("c1", fg(b"f", b"", b"x"));
        s.expect("c1", 1);
        let cancel = format!("cancel job {}", String::from_utf8_lossy(&s.h(1)));
        s.admin("a", &cancel);
        s.expect("c1", 1);
        s.admin("a", &cancel);
        s.sync("c1");
    });
    // The cancelled job is gone, so the second cancel finds nothing.
    assert_in_order(
        &lines,
        &[
            "c1 << WORK_FAIL \"H1\"",
            "a >> \"cancel job H1\\n\"",
            "a << \"ERR UNKNOWN_JOB\\r\\n\"",
            "c1 == synced",
        ],
    );
    assert_eq!(lines.iter().filter(|l| l.contains("WORK_FAIL")).count(), 1, "{lines:#?}");
}

// gearmand stores a 64-byte unique cut to 63 bytes but looks it up whole, so
// 64-byte uniques (a SHA-256 in hex, say) never coalesce there. gearframe
// keeps the whole unique and coalesces on it.
#[test]
fn ours_64_byte_unique_is_kept_whole_and_coalesces() {
    let lines = ours_session(Opts::default(), |s| {
        let u64 = [b'u'; 64];
        s.send("c1", bg(b"f", &u64, b"x"));
        s.expect("c1", 1);
        s.send("c1", bg(b"f", &u64, b"y"));
        s.expect("c1", 1);
        s.send("c1", bg(b"f", &u64[..63], b"z"));
        s.expect("c1", 1);
        s.admin_list("a", "status");
    });
    let created: Vec<&String> =
        lines.iter().filter(|l| l.starts_with("c1 << JOB_CREATED")).collect();
    assert_eq!(
        created,
        ["c1 << JOB_CREATED \"H1\"", "c1 << JOB_CREATED \"H1\"", "c1 << JOB_CREATED \"H2\""]
    );
    assert!(lines.iter().any(|l| l == "a << \"f\\t2\\t0\\t0\\n\""), "{lines:#?}");
}

/// The names an attack on the admin listings uses: each forges rows of
/// `status` or `workers`, or ends them early, on a server that stores it.
const FORGING_NAMES: [&[u8]; 4] = [b"evil\n.\nfake\t9\t9\t9", b"cr\rlf", b"tab\tbed", b"del\x7f"];

// gearmand stores function names and client ids with line breaks and tabs,
// which forge its `status` and `workers` listings (the admin tests show it
// against gearmand). gearframe refuses them with an ERROR packet and keeps the
// connection: the packet is well formed, only the name is refused.
#[test]
fn ours_names_with_control_characters_are_refused_with_error() {
    let Some(server) = ours(Opts::default()) else { return };
    let mut w = RawConn::connect(server.addr(), "w");
    let mut c = RawConn::connect(server.addr(), "c");
    let codes = |ps: Vec<Pkt>| -> Vec<String> {
        ps.iter()
            .map(|p| {
                assert_eq!(p.kind, T::Error, "{p}");
                assert!(p.arg_str(1).contains("control character"), "{p}");
                p.arg_str(0)
            })
            .collect()
    };
    for name in FORGING_NAMES {
        w.send(Packet::CanDo { function: name });
        w.send(Packet::CanDoTimeout { function: name, timeout: b"10" });
        w.send(Packet::CantDo { function: name });
        w.send(Packet::SetClientId { id: name });
        assert_eq!(
            codes(w.sync()),
            [
                "INVALID_FUNCTION_NAME",
                "INVALID_FUNCTION_NAME",
                "INVALID_FUNCTION_NAME",
                "INVALID_CLIENT_ID"
            ],
            "{}",
            quote(name)
        );
        for kind in [
            T::SubmitJob,
            T::SubmitJobBg,
            T::SubmitJobHigh,
            T::SubmitJobHighBg,
            T::SubmitJobLow,
            T::SubmitJobLowBg,
        ] {
            c.send(submit(kind, name, b"", b"x"));
        }
        c.send(Packet::SubmitJobEpoch {
            function: name,
            unique: b"",
            epoch: FAR_FUTURE,
            data: b"x",
        });
        for background in [false, true] {
            c.send(Packet::SubmitReduceJob {
                background,
                function: name,
                unique: b"",
                reducer: b"r",
                aggregator: b"",
                data: b"x",
            });
        }
        assert_eq!(codes(c.sync()), ["INVALID_FUNCTION_NAME"; 9], "{}", quote(name));
    }
    // Both connections are still served, and nothing of the names was stored.
    w.send(Packet::SetClientId { id: b"w 1" });
    w.send(Packet::CanDo { function: b"f" });
    assert!(w.sync().is_empty());
    c.send(bg(b"f", b"", b"x"));
    assert_eq!(c.recv_packet().kind, T::JobCreated);
    c.send_line("status");
    assert_eq!(c.recv_admin_list(), [&b"f\t1\t0\t1\n"[..], b".\n"]);
    c.send_line("workers");
    let workers = c.recv_admin_list();
    assert_eq!(workers.len(), 3, "{workers:?}");
    assert!(workers.iter().any(|l| l.ends_with(b" w 1 : f\n")), "{workers:?}");
    assert!(workers.iter().any(|l| l.ends_with(b" - :\n")), "{workers:?}");
    // The text admin commands that take a function name refuse them too.
    let refused: &[u8] =
        b"ERR INVALID_FUNCTION_NAME Function+name+holds+a+control+character;+use+printable+characters\r\n";
    for line in [&b"create function a\tb\n"[..], b"maxqueue a\x01b 1\n", b"drop function f\x7f\n"] {
        c.send_bytes(line);
        assert_eq!(c.recv_line(), refused, "{}", quote(line));
    }
    c.send_bytes(b"clear function a\0b\n");
    assert_eq!(c.recv_line(), refused);
    c.send_line("status");
    assert_eq!(c.recv_admin_list(), [&b"f\t1\t0\t1\n"[..], b".\n"]);
}

// gearmand compares the name of `drop function` without case, so dropping
// `foo` drops an idle `Foo`; gearframe matches the exact bytes, as every other
// command does. A missing name gets gearmand's reply (compared with gearmand
// in `drop_function_rules`).
#[test]
fn ours_drop_function_matches_the_exact_name() {
    let lines = ours_session(Opts::default(), |s| {
        s.admin("a", "create function Foo");
        let reply = s.admin("a", "drop function foo");
        assert_eq!(reply, "ERR function not found\r\n");
        assert_eq!(s.admin("a", "drop function FOO"), "ERR function not found\r\n");
        assert_eq!(s.admin_list("a", "status"), ["Foo\t0\t0\t0\n"]);
        assert_eq!(s.admin("a", "drop function Foo"), "OK\r\n");
        assert!(s.admin_list("a", "status").is_empty());
    });
    assert_in_order(&lines, &["a << \"ERR function not found\\r\\n\""]);
}
