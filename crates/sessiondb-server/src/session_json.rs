//! A session as JSON: the shape HTTP API v1 answers with, with its OpenAPI
//! schema, and what `sessiondb list --json` and `show` print.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;
use sessiondb::{Data, Session};
use utoipa::ToSchema;

use crate::schemas::{ActorId, Language, SessionData};

/// A session. `key` appears only where the caller may see it (register,
/// restore, resolve, extend, reassign); `deadline`, `nodeId` and `version`
/// only when set. Time values are Unix milliseconds.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Session)]
pub struct SessionBody {
    /// The full session key `actorId:secret`: the client's credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "player-7:3q2-7wEm1cJXyKQ0a9u5Hn8rTsYbZvPd")]
    key: Option<String>,
    /// The public session id: not a secret, safe to log and to show.
    #[schema(example = "lPTFmL4-A96CT41N")]
    id: String,
    #[schema(value_type = ActorId)]
    actor_id: String,
    #[schema(value_type = Language)]
    language: String,
    created_at: i64,
    /// When the session expires unless used (sliding), as stored.
    expires_at: u64,
    /// The absolute deadline (`--max-lifetime`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline: Option<i64>,
    /// The node that made the session (MAGE's cluster id), if configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    /// The game version that made the session, if configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    /// Bumped on every write.
    revision: u64,
    /// The values go out exactly as stored.
    #[schema(value_type = SessionData)]
    data: BTreeMap<String, Box<RawValue>>,
}

/// A stored data value that is not JSON (a store written outside sessiondb).
#[derive(Debug)]
pub struct StoredJsonError(String);

impl std::fmt::Display for StoredJsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a stored data value is not JSON: {}", self.0)
    }
}

impl std::error::Error for StoredJsonError {}

/// A stored JSON text as a JSON value, exactly as stored.
pub fn raw(json: &str) -> Result<Box<RawValue>, StoredJsonError> {
    RawValue::from_string(json.to_owned()).map_err(|e| StoredJsonError(e.to_string()))
}

/// A session's data, each value exactly as stored.
pub fn data_json(data: &Data) -> Result<BTreeMap<String, Box<RawValue>>, StoredJsonError> {
    data.iter()
        .map(|(name, json)| Ok((name.to_owned(), raw(json)?)))
        .collect()
}

/// `s` as JSON.
pub fn session_body(s: &Session) -> Result<SessionBody, StoredJsonError> {
    Ok(SessionBody {
        key: s.key().map(str::to_owned),
        id: s.id().to_owned(),
        actor_id: s.actor_id().to_owned(),
        language: s.language().to_owned(),
        created_at: s.created_at().timestamp_millis(),
        expires_at: s.expires_at_ms(),
        deadline: s.deadline().map(|d| d.timestamp_millis()),
        node_id: s.node_id().map(str::to_owned),
        version: s.version().map(str::to_owned),
        revision: s.revision(),
        data: data_json(s.data())?,
    })
}
