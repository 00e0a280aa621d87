//! Rolling forward the moves between shards that a node left half-way
//! (`intent.rs` describes their steps): each step runs (again) through the
//! write path, so a roll-forward racing the node that began it does no
//! harm.

use crate::error::{Error, Result};
use crate::intent::Intent;
use crate::session::Record;
use crate::shared::{About, Shared};

/// Steps 2 and 3 of a reassign whose step 1 committed: the moved session
/// as stored under its new actor.
pub(crate) fn one(shared: &Shared, intent: Intent, now: u64) -> Result<Record> {
    let moving = intent.clone();
    let record = shared.write(About::of(vec![intent.to.clone()]), move |p| {
        p.reassign_in(&moving, now)
    })?;
    shared.write(About::of(vec![intent.from.clone()]), move |p| {
        p.drop_intent(&intent);
        Ok(())
    })?;
    Ok(record)
}

/// Rolls forward every intent at least `grace` ms old at `now` (every
/// one, for `None`); returns how many.
pub(crate) fn stuck(shared: &Shared, now: u64, grace: Option<u64>) -> Result<usize> {
    let mut done = 0;
    for bytes in shared.engine.intents()? {
        let intent = match Intent::decode(&bytes) {
            Ok(intent) => intent,
            Err(problem) => {
                log::error!("an intent does not decode ({problem}); it is left as it is");
                continue;
            }
        };
        if grace.is_some_and(|g| intent.created_at.saturating_add(g) > now) {
            continue;
        }
        log::warn!(
            "rolling forward the reassign of {:?} to {:?} that a node left half-way",
            intent.from,
            intent.to,
        );
        match one(shared, intent, now) {
            Ok(_) | Err(Error::Invalid(_)) => done += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
