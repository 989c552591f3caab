//! The `gearframe` command: one binary that is a Gearman job server, client,
//! worker and admin tool.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // A closed stdout (`gearframe ... | head`) ends the program quietly with
    // success, as for other command-line tools.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = gearframe::panic_message(info.payload());
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
    cli::main()
}
