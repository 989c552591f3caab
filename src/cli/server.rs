//! `gearframe server`.

use std::process::ExitCode;

use clap::Args;
use gearframe::config::Config;
use gearframe::server::{Server, ServerConfig};

use super::Failure;
use super::flags::Flags;

/// Options of `gearframe server`: the fields of [`ServerConfig`], each
/// overriding the `server:` key of the same name in config.yaml.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    #[command(flatten)]
    config: Flags<ServerConfig>,
}

/// The server's settings: the config file's `server:` section with the
/// options given over it.
pub(crate) fn settings(
    flags: &Flags<ServerConfig>,
    config: &Config,
) -> Result<ServerConfig, Failure> {
    let mut cfg = config.server.clone();
    flags.apply(&mut cfg)?;
    Ok(cfg)
}

pub(crate) fn run(args: ServerArgs, config: &Config) -> Result<ExitCode, Failure> {
    let cfg = settings(&args.config, config)?;
    super::raise_fd_limit();
    let server = Server::bind(cfg)?;
    let stopper = server.stopper();
    ctrlc::set_handler(move || {
        eprintln!("gearframe server: signal received: stopping");
        stopper.shutdown();
    })
    .map_err(|e| Failure(format!("cannot install the signal handler: {e}")))?;
    eprintln!("gearframe server listening on {} ({})", server.local_addr(), server.capacity());
    // A shutdown dump that could not be written fails the exit.
    server.join_result().map_err(Failure)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use gearframe::config::Config;
    use gearframe::server::{Durability, ServerConfig};
    use serde_yaml::{Mapping, Value};

    use super::ServerArgs;

    #[derive(Debug, Parser)]
    struct Line {
        #[command(flatten)]
        args: ServerArgs,
    }

    /// A `server:` section whose every key differs from its default.
    const FILE: &str = "server:
  listen: 127.0.0.1:7001
  job_retries: 3
  worker_wakeup: 2
  round_robin: true
  job_handle_prefix: H:file
  max_packet_size: 1000
  max_connections: 50
  exceptions: true
  max_outbox: 4096
  write_timeout: 2s
  read_timeout: 3s
  max_buffered_bytes: 5000
  busy_poll: 0
  queue: sqlite:/tmp/file.db
  store_queue_on_shutdown: true
  max_queue: 7
  max_jobs: 8
  max_payload_bytes: 9000
  admin_allow: [10.0.0.0/8]
";

    /// Values for the options, each different from the file's and from the
    /// default (`store_queue_on_shutdown` only turns on: see below).
    const OPTIONS: &str = "server:
  listen: 127.0.0.1:7002
  job_retries: 4
  worker_wakeup: 1
  round_robin: false
  job_handle_prefix: H:flag
  max_packet_size: 2000
  max_connections: 60
  exceptions: false
  max_outbox: 8192
  write_timeout: 5s
  read_timeout: 0
  max_buffered_bytes: 6000
  busy_poll: 50us
  queue: sqlite:/tmp/flag.db
  max_queue: 1
  max_jobs: 2
  max_payload_bytes: 3000
  admin_allow: ['127.0.0.1', '::1']
";

    /// A section as a map of its keys, without the keys this build cannot
    /// read (a queue without the persistent-queue feature).
    fn section(text: &str) -> Mapping {
        let mut v: Value = serde_yaml::from_str(text).unwrap();
        let mut m = v.get_mut("server").unwrap().as_mapping().unwrap().clone();
        if !cfg!(feature = "persistent-queue") {
            m.remove("queue");
        }
        m
    }

    fn config(m: &Mapping) -> ServerConfig {
        let text = serde_yaml::to_string(&serde_yaml::Value::Mapping(m.clone())).unwrap();
        let indented: String = text.lines().map(|l| format!("  {l}\n")).collect();
        Config::read(&format!("server:\n{indented}")).unwrap().server
    }

    /// The options that give `key` the value `v`.
    fn options(key: &str, v: &Value) -> Vec<String> {
        let flag = format!("--{}", key.replace('_', "-"));
        match v {
            Value::Bool(b) => vec![format!("{flag}={b}")],
            Value::Number(n) => vec![flag, n.to_string()],
            Value::String(s) => vec![flag, s.clone()],
            Value::Sequence(items) => {
                items.iter().flat_map(|i| [flag.clone(), i.as_str().unwrap().to_string()]).collect()
            }
            other => panic!("{key}: no option for {other:?}"),
        }
    }

    /// `config.yaml` = `file`, then the command line `args`.
    fn applied(file: &Mapping, args: &[String]) -> ServerConfig {
        let line =
            Line::try_parse_from(std::iter::once("server".to_string()).chain(args.iter().cloned()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let mut c = Config::default();
        c.server = config(file);
        super::settings(&line.args.config, &c).unwrap()
    }

    #[test]
    fn the_test_values_differ_from_the_defaults_and_each_other() {
        let defaults = serde_yaml::to_value(ServerConfig::default()).unwrap();
        let (file, opts) = (section(FILE), section(OPTIONS));
        assert_ne!(config(&file), ServerConfig::default());
        for (key, default) in defaults.as_mapping().unwrap() {
            let key = key.as_str().unwrap();
            if key == "queue" && !cfg!(feature = "persistent-queue") {
                continue;
            }
            let f = file.get(key).unwrap_or_else(|| panic!("{key} missing in FILE"));
            assert_ne!(serde_yaml::to_value(config(&file)).unwrap()[key], *default, "{key}: {f:?}");
            if key != "store_queue_on_shutdown" {
                let o = opts.get(key).unwrap_or_else(|| panic!("{key} missing in OPTIONS"));
                assert_ne!(f, o, "{key}");
            }
        }
    }

    #[test]
    fn options_left_out_keep_the_file_values() {
        let file = section(FILE);
        assert_eq!(applied(&file, &[]), config(&file));
    }

    #[test]
    fn each_option_overrides_its_key_and_only_it() {
        let file = section(FILE);
        let mut all = Vec::new();
        for (key, value) in &section(OPTIONS) {
            let key = key.as_str().unwrap();
            let args = options(key, value);
            let mut want = file.clone();
            want.insert(key.into(), value.clone());
            assert_eq!(applied(&file, &args), config(&want), "{args:?}");
            all.extend(args);
        }
        // `--store-queue-on-shutdown` turns the file's false into true.
        let mut off = file.clone();
        off.insert("store_queue_on_shutdown".into(), false.into());
        let on = applied(&off, &["--store-queue-on-shutdown".to_string()]);
        assert_eq!(on.durability, Durability::OnShutdown);
        assert_eq!(on, config(&file));
        // All of them at once, with the short letters too.
        let mut want = section(OPTIONS);
        want.insert("store_queue_on_shutdown".into(), true.into());
        assert_eq!(applied(&file, &all), config(&want));
        let short = ["-L", "127.0.0.1:7003", "-j", "5", "-w", "6", "-R=false"].map(String::from);
        let got = applied(&file, &short);
        assert_eq!(
            (got.listen.as_str(), got.job_retries, got.worker_wakeup, got.round_robin),
            ("127.0.0.1:7003", 5, 6, false)
        );
    }

    #[test]
    fn bad_option_values_name_the_option() {
        for (args, want) in [
            (&["--queue", "mysql:x"][..], "unknown queue"),
            (&["--admin-allow", "10.0.0.0/99"], "invalid address rule"),
            (&["--write-timeout", "soon"], "invalid duration"),
            (&["--max-jobs", "many"], "many"),
        ] {
            let e = Line::try_parse_from(std::iter::once(&"server").chain(args)).unwrap_err();
            let e = e.to_string();
            assert!(e.contains(args[0]) && e.contains(want), "{args:?}: {e}");
        }
    }
}
