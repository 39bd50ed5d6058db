//! The writer's queue: a mutex-protected vector with "urgent" wake-ups. Records someone waits for
//! (`use` acknowledgements, flushes) wake a sleeping writer at once; `done`, `denied` and source
//! events ride along with the next batch or are written within `LAZY_FLUSH`. On one core this
//! halves the context switches per request.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::writer::Msg;

/// Longest a non-urgent record waits in the queue.
pub const LAZY_FLUSH: Duration = Duration::from_millis(5);

pub(crate) struct Queue {
    state: Mutex<State>,
    cv: Condvar,
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

impl Queue {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                items: Vec::new(),
                urgent: 0,
                first_lazy: None,
                writer_waiting: false,
                closed: false,
            }),
            cv: Condvar::new(),
        }
    }

    /// Queue `m`; wake the writer if it sleeps and `urgent`. `false` when closed.
    pub fn push(&self, m: Msg, urgent: bool) -> bool {
        let Ok(mut g) = self.state.lock() else {
            return false;
        };
        if g.closed {
            return false;
        }
        g.items.push(m);
        // Wake a sleeping writer for an urgent record, or for the first lazy one (so that it
        // shortens its sleep to LAZY_FLUSH): at most one lazy wake-up per LAZY_FLUSH.
        let first_lazy = !urgent && g.first_lazy.is_none();
        if urgent {
            g.urgent += 1;
        } else if first_lazy {
            g.first_lazy = Some(Instant::now());
        }
        let wake = (urgent || first_lazy) && g.writer_waiting;
        drop(g);
        if wake {
            self.cv.notify_one();
        }
        true
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
            let lazy_due = g.first_lazy.map(|t| t.elapsed() >= LAZY_FLUSH);
            if g.urgent > 0 || lazy_due == Some(true) {
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
            g = match self.cv.wait_timeout(g, wait) {
                Ok((g, _)) => g,
                Err(_) => return Popped::Closed,
            };
            g.writer_waiting = false;
        }
        out.append(&mut g.items);
        g.urgent = 0;
        g.first_lazy = None;
        Popped::Batch
    }
}
