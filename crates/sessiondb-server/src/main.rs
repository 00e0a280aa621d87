//! The `sessiondb` binary: parses the command line and runs the command.
//! Everything else lives in the crate's library target (`src/lib.rs`).
// Denied rather than forbidden: `cap_malloc_arenas` makes one FFI call.
#![deny(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

use clap::Parser;
use sessiondb_server::Cli;

fn main() -> ExitCode {
    cap_malloc_arenas();
    sessiondb_server::execute(Cli::parse())
}

/// How many malloc arenas the server lets glibc keep.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: libc::c_int = 2;

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`], unless the operator
/// chose a number with `MALLOC_ARENA_MAX` (which glibc reads itself).
///
/// glibc gives each thread that meets a locked arena an arena of its own,
/// up to 8 per core, and memory freed in an arena stays there for its
/// threads. sessiondb's writes run on the callers' threads (the write
/// group), so with glibc's default the freed pages of sled's cache end up
/// spread over every request thread's arena: at 1,000,000 sessions loaded
/// by 8 threads the peak RSS was 270 MiB with the default and 200 MiB with
/// 2 arenas, at the same throughput (`sessiondb-bench compare --only
/// peak_rss`, docs/performance.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn cap_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only sets a tunable of glibc's allocator; it is
    // called before the server starts any thread.
    let done = unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
    if done != 1 {
        eprintln!("sessiondb: could not cap malloc arenas (mallopt returned {done}); going on");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap_malloc_arenas() {}
