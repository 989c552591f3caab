//! The `gearframe` command: one binary that is a Gearman job server (and,
//! as the project grows, client, worker and admin tool).

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
