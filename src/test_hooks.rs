//! Hooks for the crate's own tests (feature `test-hooks`, which only its
//! test builds enable): the crash test stops a write between its ordered
//! steps to kill the process there; the tools' tests break an invariant of
//! a stopped store. Not an API.

pub use crate::engine::sled::hooks::{between_steps, file_stale_expiry};
