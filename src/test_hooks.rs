//! Hooks for the crate's own tests (feature `test-hooks`, which only its
//! test builds enable): the crash test stops a write between its ordered
//! steps to kill the process there. Not an API.

use std::sync::OnceLock;

type Hook = Box<dyn Fn(&'static str) + Send + Sync>;

static BETWEEN_STEPS: OnceLock<Hook> = OnceLock::new();

/// Has `hook` called between two single-key writes of a change committed
/// in order (see `docs/format.md`, section 6), on the writing thread, with
/// what the write just made was (`"filed"`, `"stored"`, `"deleted"`,
/// `"unfiled"`). Only the first hook set counts.
pub fn between_steps(hook: impl Fn(&'static str) + Send + Sync + 'static) {
    let _ = BETWEEN_STEPS.set(Box::new(hook));
}

pub(crate) fn step(what: &'static str) {
    if let Some(hook) = BETWEEN_STEPS.get() {
        hook(what);
    }
}
