//! `sessiondb`: serves MAGE's session commands over HTTP (API v1, see the
//! crate's README and `docs/openapi.json`) and runs offline tools on a
//! stopped store.
//!
//! The binary (`src/main.rs`) only parses the command line and calls
//! [`execute`]. Here, `cli` holds the arguments, `settings` merges flags,
//! environment and config file, `server` runs the HTTP service
//! (`connections` accepts and bounds its connections, `api` its
//! routes, `extract` what they take from a request, `blocking` how they
//! call the store, `auth` who may call them, `cors` which web pages may,
//! `events` the admins' event stream, `session_events` each session's own,
//! `metrics` the Prometheus figures, `state` what the handlers share,
//! `error` the error shape), `tools` holds the offline commands and `clock`
//! the time they share. All session logic lives in the `sessiondb` library.
//!
//! [`run`] is the seam for tests and embedding: it serves a store on a
//! listener the caller bound until the caller's shutdown future completes;
//! [`run_with`] takes [`Options`] (browser origins, with [`CorsPolicy`]).
//!
//! ```
//! use sessiondb::{Config, SessionStore};
//! use sessiondb_server::{run, AdminPolicy, AnyResult};
//!
//! # fn main() -> AnyResult<()> {
//! let dir = tempfile::tempdir()?;
//! let store = SessionStore::open(Config::new(dir.path()))?;
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//!     let address = listener.local_addr()?; // clients talk HTTP to this
//!     let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//!     let shutdown = async move {
//!         let _ = stopped.await;
//!     };
//!     let server = tokio::spawn(run(listener, store, AdminPolicy::new(None), shutdown));
//!     // ... requests to `address` ...
//!     # let _ = address;
//!     let _ = stop.send(());
//!     server.await??; // requests in flight finished, the store closed cleanly
//!     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//! })?;
//! let store = SessionStore::open(Config::new(dir.path()))?;
//! assert!(store.recovery_report().clean_shutdown);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod auth;
mod blocking;
mod cli;
mod clock;
mod connections;
mod cors;
mod error;
mod events;
mod extract;
mod location;
mod metrics;
mod schemas;
mod server;
mod session_events;
mod session_json;
mod settings;
mod state;
mod tools;

use std::process::ExitCode;

pub use crate::auth::AdminPolicy;
pub use crate::cli::Cli;
pub use crate::cors::{CorsPolicy, InvalidOrigin};
pub use crate::error::AnyResult;
pub use crate::server::{run, run_with, Options};

use crate::cli::Command;
use crate::location::{named_urls, Redactor};

/// Hides the passwords of the Redis URLs given on the command line and in
/// the environment.
fn redactor(command: &Command) -> Redactor {
    let store = match command {
        Command::Serve(args) => &args.store,
        Command::Stats(args) => &args.store,
        Command::List(args) => &args.store,
        Command::Show(args) => &args.store,
        Command::Expire(args) => &args.store,
        Command::Check(args) => &args.store,
        Command::Export(args) => &args.store,
        Command::Import(args) => &args.store,
        Command::Compact(args) => &args.store,
    };
    let urls = named_urls(store);
    Redactor::for_urls(urls.iter().map(String::as_str))
}

/// Runs the command `cli` names and reports its outcome: errors go to
/// stderr with their causes, and the exit code is 0 on success, 1 when
/// `check` found problems, 2 on an error.
pub fn execute(cli: Cli) -> ExitCode {
    // Messages never show a Redis URL's password (serve also hides the one
    // of its config file).
    let redactor = redactor(&cli.command);
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
            let e = redactor.error(e);
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
