//! The `sessiondb` binary: parses the command line and runs the command.
//! Everything else lives in the crate's library target (`src/lib.rs`).
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

use clap::Parser;
use sessiondb_server::Cli;

fn main() -> ExitCode {
    sessiondb_server::execute(Cli::parse())
}
