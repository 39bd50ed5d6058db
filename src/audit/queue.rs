//! The writer's queue, and when to wake the writer.
//!
//! Pushing a record never makes a syscall. A sleeping writer is woken once per burst: when the
//! runtime thread that queued records is about to park (`on_thread_park`, after it has run every
//! ready task, so the writer finds a whole batch), or by a waiting request after
//! `KICK_AFTER` (the backstop for a thread that stays busy, or a runtime without the hook).
//! Records nobody waits for (`done`, `denied`, source events) are written within `LAZY_FLUSH`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use super::writer::Msg;

/// Longest a record nobody waits for stays queued.
pub const LAZY_FLUSH: Duration = Duration::from_millis(5);
/// A request waiting this long for its `use` acknowledgement wakes the writer itself.
pub const KICK_AFTER: Duration = Duration::from_micros(500);
/// The writer never sleeps longer than this (bounds LAZY_FLUSH when no wake-up comes).
const MAX_SLEEP: Duration = Duration::from_millis(20);

pub(crate) struct Queue {
    state: Mutex<State>,
    cv: Condvar,
    /// Records are queued and the writer sleeps: wake it at the next park.
    kick_needed: AtomicBool,
}

struct State {
    items: Vec<Msg>,
    urgent: usize,
    first_lazy: Option<Instant>,
    writer_waiting: bool,
    closed: bool,
}

pub(crate) enum Popped {
    /// A batch to write (possibly empty on a timeout).
    Batch,
    /// The queue is closed; `out` holds the last records.
    Closed,
}

/// Queues to kick when a runtime thread parks.
static REGISTRY: Mutex<Vec<Weak<Queue>>> = Mutex::new(Vec::new());

/// Runtime hook (`tokio::runtime::Builder::on_thread_park`): wake writers with queued records.
pub fn on_thread_park() {
    let Ok(reg) = REGISTRY.try_lock() else { return };
    for q in reg.iter().filter_map(Weak::upgrade) {
        if q.kick_needed.swap(false, Ordering::AcqRel) {
            q.kick();
        }
    }
}

impl Queue {
    pub fn new() -> Arc<Self> {
        let q = Arc::new(Self {
            state: Mutex::new(State {
                items: Vec::new(),
                urgent: 0,
                first_lazy: None,
                writer_waiting: false,
                closed: false,
            }),
            cv: Condvar::new(),
            kick_needed: AtomicBool::new(false),
        });
        if let Ok(mut reg) = REGISTRY.lock() {
            reg.retain(|w| w.strong_count() > 0);
            reg.push(Arc::downgrade(&q));
        }
        q
    }

    /// Queue `m` (`urgent`: someone waits for it). `false` when closed.
    pub fn push(&self, m: Msg, urgent: bool) -> bool {
        let Ok(mut g) = self.state.lock() else {
            return false;
        };
        if g.closed {
            return false;
        }
        g.items.push(m);
        if urgent {
            g.urgent += 1;
        } else if g.first_lazy.is_none() {
            g.first_lazy = Some(Instant::now());
        }
        if g.writer_waiting {
            self.kick_needed.store(true, Ordering::Release);
        }
        true
    }

    /// Wake the writer now if it sleeps.
    pub fn kick(&self) {
        if let Ok(g) = self.state.lock() {
            if g.writer_waiting {
                self.cv.notify_one();
            }
        }
    }

    pub fn close(&self) {
        if let Ok(mut g) = self.state.lock() {
            g.closed = true;
        }
        self.cv.notify_one();
    }

    /// Move queued records into `out`: at once if any is urgent, else when the oldest lazy one
    /// has waited `LAZY_FLUSH`, else after `idle` (then possibly nothing).
    pub fn pop(&self, out: &mut Vec<Msg>, idle: Duration) -> Popped {
        let Ok(mut g) = self.state.lock() else {
            return Popped::Closed;
        };
        let start = Instant::now();
        loop {
            if g.closed {
                out.append(&mut g.items);
                return Popped::Closed;
            }
            if g.urgent > 0 || g.first_lazy.is_some_and(|t| t.elapsed() >= LAZY_FLUSH) {
                break;
            }
            let wait = match g.first_lazy {
                Some(t) => LAZY_FLUSH.saturating_sub(t.elapsed()),
                None => idle.saturating_sub(start.elapsed()),
            };
            if wait.is_zero() {
                break;
            }
            g.writer_waiting = true;
            g = match self.cv.wait_timeout(g, wait.min(MAX_SLEEP)) {
                Ok((g, _)) => g,
                Err(_) => return Popped::Closed,
            };
            g.writer_waiting = false;
        }
        self.kick_needed.store(false, Ordering::Release);
        out.append(&mut g.items);
        g.urgent = 0;
        g.first_lazy = None;
        Popped::Batch
    }
}
