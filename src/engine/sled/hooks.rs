//! The sled engine's hooks for the crate's own tests (feature
//! `test-hooks`), re-exported as `sessiondb::test_hooks`: the crash test
//! stops a write between its ordered steps to kill the process there, and
//! the tools' tests break an invariant of a stopped store.

use std::path::Path;
use std::sync::OnceLock;

use super::layout;
use crate::key::{Digest, DIGEST_LEN};

type Hook = Box<dyn Fn(&'static str) + Send + Sync>;

static BETWEEN_STEPS: OnceLock<Hook> = OnceLock::new();

/// Has `hook` called between two single-key writes of a change committed
/// in order (see `docs/format.md`, section 6), on the writing thread, with
/// what the write just made was (`"filed"`, `"stored"`, `"deleted"`,
/// `"unfiled"`). Only the first hook set counts.
pub fn between_steps(hook: impl Fn(&'static str) + Send + Sync + 'static) {
    let _ = BETWEEN_STEPS.set(Box::new(hook));
}

pub(super) fn step(what: &'static str) {
    if let Some(hook) = BETWEEN_STEPS.get() {
        hook(what);
    }
}

/// Files, in the stopped embedded store in `dir`, an expiry entry that
/// names no session (as a crash between two steps of a write can leave).
///
/// # Errors
/// The store cannot be opened (it is open elsewhere, say) or written.
pub fn file_stale_expiry(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let db = sled::open(dir)?;
    let record = layout::record_key("no-such-actor", &Digest([9; DIGEST_LEN]));
    db.open_tree(layout::EXPIRIES)?
        .insert(layout::expiry_key(u64::MAX, &record), &[])?;
    db.flush()?;
    Ok(())
}
