//! Options that set the fields of a config type.
//!
//! A config type (`ServerConfig`, `WorkerConfig`, ...) is what config.yaml
//! deserialises into and what the library runs on. Under the `cli` feature
//! it also derives [`clap::Args`], its field docs being the options' help:
//! [`Flags<T>`] adds those options to a subcommand and, after the file is
//! read, [`Flags::apply`] sets the fields whose option was given. So an
//! option is its field, its `Default`, its line in config.yaml and nothing
//! else.
//!
//! clap would make every field without a default required, and give every
//! `bool` option the value `false` when it is left out, which would reset
//! the file's `true`; `Flags` makes each option optional and each `bool` an
//! option with an optional value (`--exceptions`, `--exceptions=false`).
//! The help of each option ends with `[default: ...]`, read from the type's
//! `Default` through its `Serialize`.

use std::marker::PhantomData;

use clap::{ArgAction, ArgMatches, Args, Command, FromArgMatches};
use serde::Serialize;

/// The options of config type `T` given on a command line.
#[derive(Debug, Clone)]
pub(crate) struct Flags<T> {
    matches: ArgMatches,
    _config: PhantomData<T>,
}

impl<T: Args + FromArgMatches + Default + Serialize> Flags<T> {
    /// Sets the fields of `config` whose option was given.
    pub(crate) fn apply(&self, config: &mut T) -> Result<(), super::Failure> {
        config
            .update_from_arg_matches(&self.matches)
            .map_err(|e| super::Failure(super::usage_error_line(&e.to_string())))
    }
}

/// Adds the options of `T` to `cmd`, each optional, each `bool` with an
/// optional value, each help ending with its default.
fn augment<T: Args + Default + Serialize>(cmd: Command, add: fn(Command) -> Command) -> Command {
    let before: Vec<clap::Id> = cmd.get_arguments().map(|a| a.get_id().clone()).collect();
    let mut cmd = add(cmd);
    let defaults = serde_yaml::to_value(T::default()).unwrap_or(serde_yaml::Value::Null);
    let added: Vec<clap::Id> =
        cmd.get_arguments().map(|a| a.get_id().clone()).filter(|id| !before.contains(id)).collect();
    for id in added {
        let default = defaults.get(id.as_str()).and_then(shown);
        cmd = cmd.mut_arg(id, |mut a| {
            a = a.required(false);
            if matches!(a.get_action(), ArgAction::SetTrue) {
                a = a
                    .action(ArgAction::Set)
                    .num_args(0..=1)
                    .require_equals(true)
                    .hide_possible_values(true)
                    .default_missing_value("true");
            }
            match default {
                Some(value) => {
                    let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                    a.help(format!("{help} [default: {value}]"))
                }
                None => a,
            }
        });
    }
    cmd
}

/// A default as the help shows it; none for an unset or empty value.
fn shown(v: &serde_yaml::Value) -> Option<String> {
    use serde_yaml::Value;
    match v {
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Sequence(s) if !s.is_empty() => {
            Some(s.iter().filter_map(shown).collect::<Vec<_>>().join(","))
        }
        _ => None,
    }
}

impl<T: Args + Default + Serialize> Args for Flags<T> {
    fn augment_args(cmd: Command) -> Command {
        augment::<T>(cmd, T::augment_args)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        augment::<T>(cmd, T::augment_args_for_update)
    }
}

impl<T> FromArgMatches for Flags<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Flags { matches: matches.clone(), _config: PhantomData })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.matches = matches.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use serde::Serialize;

    use super::Flags;

    /// A config type as the library writes one.
    #[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
    struct Settings {
        /// How many.
        #[arg(short = 'n', long)]
        count: u32,
        /// On or off.
        #[arg(long)]
        on: bool,
        /// How long.
        #[arg(long, value_parser = gearframe::config::parse_duration)]
        #[serde(with = "gearframe::config::duration")]
        wait: Duration,
        /// A name.
        #[arg(long)]
        name: Option<String>,
        /// A list.
        #[arg(long)]
        item: Vec<String>,
    }

    impl Default for Settings {
        fn default() -> Self {
            Settings {
                count: 4,
                on: false,
                wait: Duration::from_secs(2),
                name: None,
                item: Vec::new(),
            }
        }
    }

    #[derive(Debug, Parser)]
    struct Line {
        /// Not a setting.
        #[arg(long)]
        other: bool,
        #[command(flatten)]
        flags: Flags<Settings>,
    }

    /// The file's values, each different from the default.
    fn from_file() -> Settings {
        Settings {
            count: 9,
            on: true,
            wait: Duration::from_millis(250),
            name: Some("file".into()),
            item: vec!["a".into()],
        }
    }

    fn applied(args: &[&str]) -> Result<Settings, String> {
        let line = Line::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let mut s = from_file();
        line.flags.apply(&mut s).map_err(|e| e.0)?;
        Ok(s)
    }

    #[test]
    fn options_left_out_keep_the_file_values() {
        assert_eq!(applied(&[]).unwrap(), from_file());
        assert_eq!(applied(&["--other"]).unwrap(), from_file());
    }

    #[test]
    fn options_given_replace_the_file_values() {
        let s = applied(&["-n", "1", "--on=false", "--wait", "5s", "--name", "x", "--item", "b"])
            .unwrap();
        let want = Settings {
            count: 1,
            on: false,
            wait: Duration::from_secs(5),
            name: Some("x".into()),
            item: vec!["b".into()],
        };
        assert_eq!(s, want);
        let mut off = from_file();
        off.on = false;
        let line = Line::try_parse_from(["t", "--on"]).unwrap();
        line.flags.apply(&mut off).unwrap();
        assert!(off.on, "a bare --on turns it on");
    }

    #[test]
    fn bad_values_name_the_option() {
        let e = applied(&["--wait", "soon"]).unwrap_err();
        assert!(e.contains("--wait"), "{e}");
        let e = applied(&["--count", "-1"]).unwrap_err();
        assert!(e.contains("-1"), "{e}");
    }

    #[test]
    fn help_shows_the_defaults() {
        use clap::CommandFactory;
        let help = Line::command().render_help().to_string();
        assert!(help.contains("How many [default: 4]"), "{help}");
        assert!(help.contains("--on[=<ON>]      On or off [default: false]\n"), "{help}");
        assert!(help.contains("How long [default: 2s]"), "{help}");
        assert!(help.contains("A name\n"), "an unset default is not shown: {help}");
    }
}
