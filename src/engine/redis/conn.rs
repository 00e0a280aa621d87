//! Connections to the Redis / Valkey server: a small pool of synchronous
//! connections with timeouts. A connection that failed is dropped, and the
//! next call connects again, so the store reconnects by itself.

use std::sync::Mutex;
use std::time::Duration;

use redis::{Client, Connection, RedisError, RetryMethod};

use crate::error::{Error, Result, StorageError};

/// How many idle connections are kept.
const IDLE: usize = 64;

pub(crate) struct Pool {
    client: Client,
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

/// Maps a client error: refused credentials are `InvalidConfig`;
/// unreachable, too slow, or not ready yet (a server still loading its data
/// after a restart, a failover under way) is `Unavailable`; anything else a
/// storage failure.
pub(crate) fn failed(context: &'static str) -> impl Fn(RedisError) -> Error {
    move |e| {
        // Refused credentials are the configuration's fault: retrying
        // cannot help.
        if e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        {
            return Error::InvalidConfig {
                setting: "redis_url",
                problem: format!(
                    "the server refused the URL's user name or password ({context}: {e}); check them"
                ),
            };
        }
        let down = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || matches!(
                e.retry_method(),
                RetryMethod::Reconnect
                    | RetryMethod::WaitAndRetry
                    | RetryMethod::ReconnectFromInitialConnections
            );
        let source = StorageError::new(context, e);
        if down {
            Error::Unavailable { source }
        } else {
            Error::Storage(source)
        }
    }
}

impl Pool {
    pub fn new(client: Client, timeout: Duration) -> Self {
        Pool {
            client,
            timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A new connection with this pool's timeouts; `read_timeout` overrides
    /// the read timeout (blocking reads of the event stream).
    pub fn connect(&self, read_timeout: Option<Duration>) -> Result<Connection> {
        let fail = failed("connecting to the server");
        let con = self
            .client
            .get_connection_with_timeout(self.timeout)
            .map_err(&fail)?;
        con.set_read_timeout(Some(read_timeout.unwrap_or(self.timeout)))
            .map_err(&fail)?;
        con.set_write_timeout(Some(self.timeout)).map_err(&fail)?;
        Ok(con)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on a pooled connection. The connection goes back to the
    /// pool unless the call failed for want of the server.
    pub fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let pooled = self.idle().pop();
        let mut con = match pooled {
            Some(con) => con,
            None => self.connect(None)?,
        };
        let out = f(&mut con);
        if !matches!(out, Err(Error::Unavailable { .. })) {
            let mut idle = self.idle();
            if idle.len() < IDLE {
                idle.push(con);
            }
        }
        out
    }
}
