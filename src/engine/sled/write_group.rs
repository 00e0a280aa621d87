//! Immediate durability's group commit: callers whose writes are done share
//! one flush + fsync.
//!
//! Every write commits on its caller's thread (`commit`: ordered single-key
//! writes under the actor's turn). With `Durability::Immediate` a call must
//! not return before its writes are on disk, and one fsync costs as much as
//! hundreds of writes, so callers share them. A caller whose writes are done
//! joins the write group (`join`) with the events those writes publish,
//! while it still holds its actors' turns: so the order of the group is a
//! commit order of every actor. Then it waits (`wait`). The first waiting
//! caller to find no leader leads: one sled flush and one fsync, which cover
//! every write that joined before the flush began; then it publishes the
//! events of those writes in the order they joined, answers their callers,
//! and steps down. Callers that joined meanwhile wait for the next flush;
//! the first of them already waiting leads it.
//!
//! Waiting callers sleep (`std::thread::park`): they neither poll nor spin,
//! however long a flush takes, since a core taken by a waiting caller is a
//! core taken from the game that embeds the store. Only callers with a
//! reason to wake are woken: a leader wakes each caller it answered and,
//! stepping down, the first caller that is already waiting among those left,
//! who leads next. A caller may join and come to wait later (the reaper
//! queues a batch and reads the next one ahead before it waits): such a
//! caller is never the one woken to lead, so nobody waits behind it; when
//! it comes to wait and finds no leader, it leads itself.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;

use crossbeam_channel::TryRecvError;

use crate::engine::{Answer, Commit, Ticket};
use crate::error::{Error, Result, SharedError, StorageError};
use crate::events::{Event, EventHub};
use crate::worker::Poison;

/// The name a failed write group poisons the store with: the role the
/// committer thread had before writes committed on their callers' threads.
pub(crate) const WRITER: &str = "committer";

pub(crate) fn writer_failed() -> Error {
    Error::WorkerFailed { worker: WRITER }
}

/// Makes every write done so far durable: a sled flush and an fsync.
pub(crate) type Flush = dyn Fn() -> Result<()> + Send + Sync;

/// Writes that joined and are not yet on disk.
struct Pending {
    /// Published once the writes are on disk.
    events: Vec<Event>,
    answer: Answer,
    /// The caller's thread: it joined on it, and waits on it (`wait`).
    caller: Thread,
    /// Its caller sleeps in `wait`.
    waiting: bool,
}

#[derive(Default)]
struct State {
    /// Writes joined and not yet answered, in the order they joined.
    pending: VecDeque<Pending>,
    /// A caller is flushing.
    leading: bool,
}

pub(crate) struct WriteGroup {
    flush: Box<Flush>,
    events: Arc<EventHub>,
    poison: Arc<Poison>,
    state: Mutex<State>,
    /// Flushes made (each with an fsync).
    syncs: AtomicU64,
}

impl WriteGroup {
    pub fn new(flush: Box<Flush>, events: Arc<EventHub>, poison: Arc<Poison>) -> Self {
        WriteGroup {
            flush,
            events,
            poison,
            state: Mutex::new(State::default()),
            syncs: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it: flushes run with it released.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Joins the group with writes that are done, and the events they
    /// publish once they are on disk; the ticket is answered then. Called
    /// while the writes' actors are still held, so that the group's order is
    /// each actor's commit order, and on the thread that will `wait`.
    pub fn join(&self, events: Vec<Event>) -> Ticket {
        let (answer, ticket) = Ticket::pending();
        self.lock().pending.push_back(Pending {
            events,
            answer,
            caller: std::thread::current(),
            waiting: false,
        });
        ticket
    }

    /// Waits, on the thread that joined, until the joined writes are on disk
    /// and their events, and every earlier write's, are published; leads a
    /// flush whenever no one else does.
    ///
    /// # Errors
    /// The flush's failure, shared by every write it covered.
    pub fn wait(&self, ticket: Ticket) -> Result<Commit> {
        let answer = match ticket {
            Ticket::Answered(outcome) => return outcome,
            Ticket::Pending(answer) => answer,
        };
        loop {
            match answer.try_recv() {
                Ok(outcome) => return outcome,
                // A leader panicked: the store is poisoned.
                Err(TryRecvError::Disconnected) => return Err(writer_failed()),
                Err(TryRecvError::Empty) => {}
            }
            let mut state = self.lock();
            // Answers are given under the lock: checked again, one cannot
            // come between this check and the park below unseen.
            if !answer.is_empty() {
                continue;
            }
            if !state.leading {
                self.lead(state);
                continue;
            }
            let me = std::thread::current().id();
            for pending in state.pending.iter_mut().filter(|p| p.caller.id() == me) {
                pending.waiting = true;
            }
            drop(state);
            // Unparked when answered or when it is to lead; an unpark that
            // came first (or a spurious wake-up) costs one turn of the loop.
            std::thread::park();
        }
    }

    /// Flushes once for every write joined so far, publishes their events,
    /// answers them, and steps down.
    fn lead(&self, mut state: MutexGuard<'_, State>) {
        state.leading = true;
        let covered = state.pending.len();
        let events: Vec<Vec<Event>> = state
            .pending
            .iter_mut()
            .map(|p| std::mem::take(&mut p.events))
            .collect();
        drop(state);
        let flushed = panic::catch_unwind(AssertUnwindSafe(|| (self.flush)()));
        let answer = match flushed {
            Ok(Ok(())) => {
                self.syncs.fetch_add(1, Ordering::Relaxed);
                // Leaders follow one another, so events go out in join order.
                for events in &events {
                    self.events.publish(events);
                }
                None
            }
            Ok(Err(e)) => {
                log::error!("a durable flush failed: {e}");
                Some(Arc::new(e))
            }
            Err(_) => {
                log::error!("a durable flush panicked; the store is poisoned");
                self.poison.set(WRITER);
                Some(Arc::new(writer_failed()))
            }
        };
        let mut state = self.lock();
        let mut wake = Vec::with_capacity(covered + 1);
        for pending in state.pending.drain(..covered) {
            pending.answer.give(match &answer {
                None => Ok(Commit::Done),
                // Every caller gets the failure with its source chain.
                Some(cause) => Err(Error::Storage(StorageError::new(
                    "making writes durable",
                    SharedError::new(cause.clone()),
                ))),
            });
            if pending.waiting {
                wake.push(pending.caller);
            }
        }
        state.leading = false;
        // Leads next: the first caller already waiting. One that joined and
        // has not come to wait yet is passed over (see the module docs).
        if let Some(next) = state.pending.iter().find(|p| p.waiting) {
            wake.push(next.caller.clone());
        }
        drop(state);
        for thread in wake {
            thread.unpark();
        }
    }

    /// Flushes made since open.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::events::UnsetReason;

    /// CPU time this thread has used (Linux's per-thread scheduler
    /// statistics, in nanoseconds).
    fn thread_cpu() -> Duration {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat")
            .expect("/proc/thread-self/schedstat (Linux)");
        let ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("CPU time in schedstat");
        Duration::from_nanos(ns)
    }

    fn event(n: u64) -> Event {
        Event::Unset {
            id: n.to_string(),
            actor_id: "a".into(),
            reason: UnsetReason::Expired,
        }
    }

    /// A fake flush that blocks until the test releases it, once per
    /// release, and says when it starts.
    struct SlowFlush {
        started: Mutex<mpsc::Sender<()>>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    fn slow_group() -> (Arc<WriteGroup>, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let slow = SlowFlush {
            started: Mutex::new(started_tx),
            release: Mutex::new(release_rx),
        };
        let flush = Box::new(move || {
            let _ = slow.started.lock().unwrap().send(());
            slow.release
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(20))
                .map_err(|_| Error::Closed)
        });
        let group = WriteGroup::new(
            flush,
            Arc::new(EventHub::new(1024)),
            Arc::new(Poison::default()),
        );
        (Arc::new(group), started, release)
    }

    /// Waits (bounded) until `n` callers sleep in `wait`.
    fn until_waiting(group: &WriteGroup, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let waiting = group.lock().pending.iter().filter(|p| p.waiting).count();
            if waiting >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{waiting} of {n} callers wait");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Callers waiting while another leads a long flush sleep: over the
    /// flush they use next to no CPU, then one flush answers them all, and
    /// their events come out in the order they joined.
    #[test]
    fn callers_waiting_on_a_slow_flush_sleep_and_are_all_answered() {
        let (group, started, release) = slow_group();
        let events = group.events.subscribe();
        let leader = {
            let group = group.clone();
            std::thread::spawn(move || {
                let ticket = group.join(vec![event(0)]);
                group.wait(ticket)
            })
        };
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        let (done_tx, done) = mpsc::channel();
        for n in 1..=4 {
            let (group, done_tx) = (group.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let cpu = thread_cpu();
                let ticket = group.join(vec![event(n)]);
                let answer = group.wait(ticket);
                let _ = done_tx.send((answer.is_ok(), thread_cpu() - cpu));
            });
        }
        until_waiting(&group, 4);
        // A caller that spun would use most of this on a core of its own.
        let window = Duration::from_millis(300);
        std::thread::sleep(window);
        // The leader's flush, then the one the first waiting caller leads.
        release.send(()).unwrap();
        release.send(()).unwrap();
        leader.join().unwrap().unwrap();
        for _ in 1..=4 {
            let (ok, cpu) = done
                .recv_timeout(Duration::from_secs(10))
                .expect("answered");
            assert!(ok);
            assert!(
                cpu < window / 6,
                "a waiting caller used {cpu:?} of CPU over a {window:?} flush"
            );
        }
        assert_eq!(group.syncs(), 2, "the four waiting callers share one flush");
        let ids: Vec<String> = events
            .try_iter()
            .map(|e| match e {
                Event::Unset { id, .. } => id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids[0], "0");
        let mut rest = ids[1..].to_vec();
        rest.sort();
        assert_eq!(rest, ["1", "2", "3", "4"]);
    }

    /// A caller that joined but has not come to wait (the reaper reading
    /// its next batch ahead) is not the one woken to lead: callers waiting
    /// behind it are answered without it.
    #[test]
    fn a_caller_not_yet_waiting_does_not_hold_up_those_behind_it() {
        let (group, started, release) = slow_group();
        let leader = {
            let group = group.clone();
            std::thread::spawn(move || {
                let ticket = group.join(vec![]);
                group.wait(ticket)
            })
        };
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        let late = group.join(vec![event(1)]);
        let (done_tx, done) = mpsc::channel();
        {
            let group = group.clone();
            std::thread::spawn(move || {
                let ticket = group.join(vec![event(2)]);
                let _ = done_tx.send(group.wait(ticket).is_ok());
            });
        }
        until_waiting(&group, 1);
        release.send(()).unwrap();
        release.send(()).unwrap();
        leader.join().unwrap().unwrap();
        assert_eq!(done.recv_timeout(Duration::from_secs(10)), Ok(true));
        // The late caller's writes were covered by that flush too.
        assert!(matches!(&late, Ticket::Pending(answer) if !answer.is_empty()));
        group.wait(late).unwrap();
        assert_eq!(group.syncs(), 2);
    }

    /// Many callers joining and waiting at once: every one is answered (no
    /// wake-up is lost), each caller's events come out in its order, and
    /// callers share flushes.
    #[test]
    fn no_wake_up_is_lost_among_many_callers() {
        let flushes = Arc::new(AtomicU64::new(0));
        let flush = {
            let flushes = flushes.clone();
            Box::new(move || {
                let n = flushes.fetch_add(1, Ordering::Relaxed);
                // Some flushes take a while, so that callers pile up.
                if n.is_multiple_of(7) {
                    std::thread::sleep(Duration::from_micros(300));
                }
                Ok(())
            })
        };
        let group = Arc::new(WriteGroup::new(
            flush,
            Arc::new(EventHub::new(100_000)),
            Arc::new(Poison::default()),
        ));
        let events = group.events.subscribe();
        let (threads, each) = (8u64, 300u64);
        let (done_tx, done) = mpsc::channel();
        for t in 0..threads {
            let (group, done_tx) = (group.clone(), done_tx.clone());
            std::thread::spawn(move || {
                for i in 0..each {
                    let ticket = group.join(vec![event(t * each + i)]);
                    if group.wait(ticket).is_err() {
                        break;
                    }
                }
                let _ = done_tx.send(t);
            });
        }
        for _ in 0..threads {
            done.recv_timeout(Duration::from_secs(30))
                .expect("every caller is answered");
        }
        let mut last = vec![None; threads as usize];
        let mut seen = 0;
        for e in events.try_iter() {
            let Event::Unset { id, .. } = e else {
                panic!("{e:?}")
            };
            let n: u64 = id.parse().unwrap();
            let t = (n / each) as usize;
            assert!(last[t] < Some(n), "thread {t}'s events out of order");
            last[t] = Some(n);
            seen += 1;
        }
        assert_eq!(seen, threads * each);
        assert!(group.syncs() <= threads * each);
        assert_eq!(group.syncs(), flushes.load(Ordering::Relaxed));
    }

    /// A flush that fails answers every write it covered with the failure,
    /// and the group goes on.
    #[test]
    fn a_failed_flush_answers_its_writes_with_the_failure() {
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flush = {
            let fail = fail.clone();
            Box::new(move || {
                if fail.swap(false, Ordering::Relaxed) {
                    Err(Error::Closed)
                } else {
                    Ok(())
                }
            })
        };
        let group = WriteGroup::new(
            flush,
            Arc::new(EventHub::new(16)),
            Arc::new(Poison::default()),
        );
        let events = group.events.subscribe();
        let ticket = group.join(vec![event(1)]);
        let err = group.wait(ticket).unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "{err}");
        assert!(events.try_recv().is_err(), "no event for a failed write");
        let ticket = group.join(vec![event(2)]);
        group.wait(ticket).unwrap();
        assert_eq!(events.try_iter().count(), 1);
    }
}
