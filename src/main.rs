//! The `clover-engine` command line.

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse_args();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
