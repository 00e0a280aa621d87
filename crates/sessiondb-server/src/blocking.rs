//! Store calls from async handlers. A store call blocks (a write waits for
//! its commit, and for the fsync in immediate mode), so every one runs on
//! tokio's blocking pool.

use sessiondb::Reason;

use crate::error::ApiError;

/// Runs `job` on the blocking pool and hands back its result; a worker that
/// panicked is a `500 internal`.
pub async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> sessiondb::Result<T> + Send + 'static,
) -> Result<sessiondb::Result<T>, ApiError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| ApiError::internal(format!("a request worker failed: {e}")))
}

/// As [`blocking`], with the store's error turned into the API's.
pub async fn run<T: Send + 'static>(
    job: impl FnOnce() -> sessiondb::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    blocking(job).await?.map_err(ApiError::from)
}

/// A store call's outcome for the resolve metrics: `ok`, MAGE's reason, or
/// `error`.
pub fn outcome<T>(result: &sessiondb::Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.reason().map_or("error", Reason::as_str),
    }
}
