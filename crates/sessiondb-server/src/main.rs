//! `sessiondb`: serves MAGE's session commands over HTTP (API v1, see
//! `DESIGN.md`) and runs offline tools on a stopped store.
//!
//! The binary is thin: `cli` parses arguments, `settings` merges flags,
//! environment and config file, `server` runs the HTTP service until a
//! signal, and `tools` holds the offline commands. All session logic lives
//! in the `sessiondb` library.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod auth;
mod cli;
mod clock;
mod error;
mod events;
mod metrics;
mod server;
mod settings;
mod state;
mod tools;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => server::main(args),
        Command::Stats(args) => tools::stats(&args),
        Command::List(args) => tools::list(&args),
        Command::Show(args) => tools::show(&args),
        Command::Expire(args) => tools::expire(&args),
        Command::Check(args) => tools::check(&args),
        Command::Export(args) => tools::export(&args),
        Command::Import(args) => tools::import(&args),
        Command::Compact(args) => tools::compact(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            let message = e.to_string();
            eprintln!("error: {message}");
            // Most messages already quote their source; show only the rest.
            let mut source = std::error::Error::source(&*e);
            while let Some(s) = source {
                let text = s.to_string();
                if !message.contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                source = s.source();
            }
            ExitCode::from(tools::EXIT_ERROR)
        }
    }
}
