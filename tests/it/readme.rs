//! README.md's recipes, run as written: every command line of the Recipes
//! section must be one this test knows and runs (with free ports in place
//! of 4730 and 4731), so the README cannot drift from the binary.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::support::{ChildGuard, eventually, free_port, peer, wait_listening};

const T: Duration = Duration::from_secs(30);

/// The command lines of the Recipes section, in order.
fn recipe_lines() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("\n## Recipes").expect("README has a Recipes section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut lines = Vec::new();
    let mut in_sh = false;
    for l in section.lines() {
        if l.starts_with("```") {
            in_sh = !in_sh && l.trim() == "```sh";
            continue;
        }
        if in_sh && !l.trim().is_empty() && !l.trim_start().starts_with('#') {
            lines.push(l.trim().to_string());
        }
    }
    lines
}

/// Runs recipe lines through `sh` in a scratch directory holding the
/// shipped config.yaml and plugin/, with `gearframe` on the PATH.
struct Shell {
    dir: tempfile::TempDir,
    ports: [(String, u16); 2],
    ran: BTreeSet<String>,
    background: Vec<ChildGuard>,
}

impl Shell {
    fn new() -> Shell {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(root.join("config.yaml"), dir.path().join("config.yaml")).unwrap();
        std::fs::create_dir(dir.path().join("plugin")).unwrap();
        std::fs::copy(root.join("plugin/eg.yaml"), dir.path().join("plugin/eg.yaml")).unwrap();
        Shell {
            dir,
            ports: [("4730".into(), free_port()), ("4731".into(), free_port())],
            ran: BTreeSet::new(),
            background: Vec::new(),
        }
    }

    fn port(&self, i: usize) -> u16 {
        self.ports[i].1
    }

    fn new_port(&mut self, i: usize) {
        self.ports[i].1 = free_port();
    }

    /// The shell command for a line; `exec` makes the program itself the
    /// child, so a signal reaches it.
    fn command(&mut self, line: &str) -> Command {
        self.ran.insert(line.to_string());
        let mut text = line.trim_end_matches('&').trim().to_string();
        for (from, to) in &self.ports {
            text = text
                .replace(&format!(":{from}"), &format!(":{to}"))
                .replace(&format!("={from}"), &format!("={to}"));
        }
        let bin_dir: PathBuf = Path::new(env!("CARGO_BIN_EXE_gearframe")).parent().unwrap().into();
        let path = std::env::join_paths(
            std::iter::once(bin_dir)
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()))
                .chain(["/usr/sbin".into()]),
        )
        .unwrap();
        let plain_program = !text.contains('|') && !text.starts_with("GEARMAN_SERVERS=");
        let script = if plain_program { format!("exec {text}") } else { text };
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(script)
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env_remove("GEARMAN_SERVERS")
            .stdin(Stdio::null());
        c
    }

    /// A line ending in `&`: started and kept running.
    fn start(&mut self, line: &str) {
        assert!(line.ends_with('&'), "`{line}` is not a background recipe");
        let child = self.command(line).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        self.background.push(ChildGuard(child));
    }

    /// A line that runs to completion.
    fn run(&mut self, line: &str) -> Output {
        let out = self.command(line).output().unwrap();
        assert!(
            out.status.success(),
            "`{line}` failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A long-running line: started, then stopped with Ctrl-C (SIGINT) once
    /// `ready` holds; it must exit 0.
    fn interrupt(&mut self, line: &str, ready: impl FnMut(&mut Shell) -> bool) -> Output {
        let child =
            self.command(line).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut ready = ready;
        eventually(T, line, || ready(self).then_some(()));
        interrupt_child(child, line)
    }

    fn admin_status(&self, port: u16) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_gearframe"))
            .args([
                "-c",
                "/dev/null",
                "admin",
                "--json",
                "status",
                "-s",
                &format!("127.0.0.1:{port}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_workers(&self, port: u16, function: &str) {
        eventually(T, &format!("workers for {function}"), || {
            let s = self.admin_status(port);
            let v: serde_json::Value = serde_json::from_str(&s).ok()?;
            v["totals"]
                .as_array()?
                .iter()
                .any(|f| f["function"] == function && f["workers"].as_u64() > Some(0))
                .then_some(())
        });
    }
}

fn interrupt_child(mut child: Child, line: &str) -> Output {
    assert!(
        Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success()
    );
    let status = eventually(T, "exit after Ctrl-C", || child.try_wait().unwrap());
    let out = child.wait_with_output().unwrap();
    assert!(
        status.success(),
        "`{line}` after Ctrl-C: {status}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn find<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("README recipes lost the line starting `{prefix}`"))
}

#[test]
fn readme_recipes_run_as_written() {
    let lines = recipe_lines();
    assert!(lines.len() >= 10, "{lines:?}");
    let mut sh = Shell::new();
    let p = sh.port(0);

    // A server, a shell-command worker and jobs for it.
    sh.start(find(&lines, "gearframe server -L 127.0.0.1:4730 &"));
    wait_listening(([127, 0, 0, 1], p).into(), T);
    sh.start(find(&lines, "gearframe worker -s 127.0.0.1:4730 -f wc -- wc -l &"));
    sh.wait_workers(p, "wc");
    let out = sh.run(find(&lines, "printf 'one\\ntwo\\n' | gearframe submit"));
    assert_eq!(stdout(&out).trim(), "2");
    let out = sh.run(find(&lines, "gearframe submit -s 127.0.0.1:4730 -b -f wc"));
    assert!(stdout(&out).starts_with("H:"), "{}", stdout(&out));

    // The plan every 10 s: the first cycle's jobs wait (no worker yet), then
    // Ctrl-C stops the sender.
    let out = sh.interrupt(
        find(
            &lines,
            "gearframe send -s 127.0.0.1:4730 --plan plugin/eg.yaml --mode async --cycle 10s",
        ),
        |sh| {
            let s = sh.admin_status(p);
            s.contains("\"function\":\"test1\",\"queued\":1")
                && s.contains("\"function\":\"test2\",\"queued\":1")
        },
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sent 2,"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sh.start(find(&lines, "gearframe worker -s 127.0.0.1:4730 test1 test2 &"));
    sh.wait_workers(p, "test1");
    let out =
        sh.run(find(&lines, "gearframe send -s 127.0.0.1:4730 --plan plugin/eg.yaml --mode sync"));
    let text = stdout(&out);
    assert!(text.lines().any(|l| l.starts_with("test1\tcomplete")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("test2\tcomplete")), "{text}");

    // Watching.
    let out = sh.run(find(&lines, "gearframe admin -s 127.0.0.1:4730 status"));
    assert!(
        stdout(&out).lines().any(|l| l.split_whitespace().nth(1) == Some("wc")),
        "{}",
        stdout(&out)
    );
    let watch = find(&lines, "gearframe admin -s 127.0.0.1:4730 watch").to_string();
    let mut child =
        sh.command(&watch).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut pipe = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut pipe, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("test1") {
        seen.extend(rx.recv_timeout(T).expect("watch drew no frame with test1"));
    }
    interrupt_child(child, &watch);
    reader.join().unwrap();

    // Several servers, the second one gearmand.
    let gearmand_line = find(&lines, "gearmand --listen=127.0.0.1 --port=4731").to_string();
    if peer("gearmand").is_some() {
        let p2 = sh.port(1);
        sh.start(&gearmand_line);
        wait_listening(([127, 0, 0, 1], p2).into(), T);
        sh.start(find(
            &lines,
            "gearframe worker -s 127.0.0.1:4730,127.0.0.1:4731 -f wc -- wc -l &",
        ));
        sh.wait_workers(p2, "wc");
        let out = sh.run(find(
            &lines,
            "GEARMAN_SERVERS=127.0.0.1:4730,127.0.0.1:4731 gearframe submit -f wc",
        ));
        assert_eq!(stdout(&out).trim(), "0", "`any server` has no newline, so wc -l counts 0");
        let out = sh.run(find(&lines, "gearframe admin -s 127.0.0.1:4730,127.0.0.1:4731 status"));
        assert!(
            stdout(&out).lines().any(|l| l.starts_with("TOTAL") && l.contains("wc")),
            "{}",
            stdout(&out)
        );
    } else {
        sh.ran.extend(lines.iter().filter(|l| l.contains("4731")).cloned());
    }

    // One process: server and the pool of config.yaml.
    sh.new_port(0);
    let p = sh.port(0);
    let up = find(&lines, "gearframe up -L 127.0.0.1:4730").to_string();
    let out = sh.interrupt(&up, |sh| sh.admin_status(p).contains("\"function\":\"test1\""));
    assert!(stdout(&out).contains(&format!("listening on 127.0.0.1:{p}")), "{}", stdout(&out));
    assert!(stdout(&out).trim_end().ends_with("gearframe up: stopped"), "{}", stdout(&out));

    // The persistent queue keeps a background job across a crash.
    sh.new_port(0);
    let p = sh.port(0);
    let persistent =
        find(&lines, "gearframe server -L 127.0.0.1:4730 --queue sqlite:queue.db &").to_string();
    sh.start(&persistent);
    wait_listening(([127, 0, 0, 1], p).into(), T);
    let submit = Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args([
            "-c",
            "/dev/null",
            "submit",
            "-s",
            &format!("127.0.0.1:{p}"),
            "-b",
            "-f",
            "kept",
            "data",
        ])
        .output()
        .unwrap();
    assert!(submit.status.success());
    let server = sh.background.pop().unwrap();
    assert!(
        Command::new("kill").args(["-KILL", &server.id().to_string()]).status().unwrap().success()
    );
    drop(server);
    sh.start(&persistent);
    wait_listening(([127, 0, 0, 1], p).into(), T);
    let status = sh.admin_status(p);
    assert!(status.contains("\"function\":\"kept\",\"queued\":1"), "{status}");
    assert!(sh.dir.path().join("queue.db").is_file());

    let missed: Vec<&String> = lines.iter().filter(|l| !sh.ran.contains(*l)).collect();
    assert!(missed.is_empty(), "README recipes this test does not run: {missed:?}");
}
