//! Ordering this process's writes: the gate held for whole-store work (a
//! check, an export): writers pass it while it is open; a holder closes it
//! and waits for the writers already inside to leave. And per-actor turns.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct State {
    held: bool,
    inside: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: Mutex<State>,
    changed: Condvar,
}

/// A writer inside the gate; leaves on drop.
pub(crate) struct Pass<'a>(&'a Gate);

/// The gate held closed; opens on drop.
pub(crate) struct Hold(Arc<Gate>);

impl Gate {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(state)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Enters, waiting while the gate is held.
    pub fn enter(&self) -> Pass<'_> {
        let mut state = self.lock();
        while state.held {
            state = self.wait(state);
        }
        state.inside += 1;
        Pass(self)
    }

    /// Closes the gate and waits until no writer is inside.
    pub fn hold(self: &Arc<Self>) -> Hold {
        let mut state = self.lock();
        while state.held {
            state = self.wait(state);
        }
        state.held = true;
        while state.inside > 0 {
            state = self.wait(state);
        }
        Hold(self.clone())
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.inside -= 1;
        // Only a holder waits for writers to leave; every write passes here,
        // so the others are spared the wake-up call.
        if state.held && state.inside == 0 {
            self.0.changed.notify_all();
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.lock().held = false;
        self.0.changed.notify_all();
    }
}

/// How many locks the actors' turns are striped over. Unrelated actors
/// that share a stripe wait for each other, and a writer preempted while it
/// holds a stripe holds up every writer of that stripe: with 64 writers on
/// 2 cores and 256 stripes, two thirds of the writers were found waiting on
/// a stripe (sled engine, unique actors); with 4,096, collisions are rare
/// (about 1.5% per writer at 64 writers), for 16 KiB.
const STRIPES: usize = 4096;

/// Per-actor turns for this node's plans: striped locks, taken in stripe
/// order so that plans over several actors cannot deadlock.
pub(crate) struct Turns {
    stripes: Vec<Mutex<()>>,
}

impl Default for Turns {
    fn default() -> Self {
        Turns {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl Turns {
    /// The stripe whose lock gives `actor` its turn.
    pub fn stripe(&self, actor: &str) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(actor, &mut h);
        (std::hash::Hasher::finish(&h) % self.stripes.len() as u64) as usize
    }

    /// Waits for the turn of every actor in `actors`.
    pub fn take(&self, actors: &[String]) -> Vec<MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = actors.iter().map(|a| self.stripe(a)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|i| {
                self.stripes[i]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_waits_for_writers_inside_and_keeps_new_ones_out() {
        let gate = Arc::new(Gate::default());
        let pass = gate.enter();
        let (tx, rx) = std::sync::mpsc::channel();
        let holder = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let hold = gate.hold();
                tx.send(()).unwrap();
                drop(hold);
            })
        };
        // The holder cannot get in while a writer is inside.
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(50))
            .is_err());
        drop(pass);
        rx.recv().unwrap();
        holder.join().unwrap();
        let _again = gate.enter();
    }
}
