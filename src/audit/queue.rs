//! The records waiting to be committed, and the flags that say who should commit them.
//!
//! Pushing a record never makes a syscall. Records someone waits for (`use`) raise the global
//! `PENDING` flag, which the runtime's park hook (`commit::on_thread_park`) checks before the
//! thread sleeps. Records nobody waits for (`done`, `denied`, source events) wake nobody: they go
//! out with the next `use`, or the writer thread, which never sleeps longer than `MAX_SLEEP`,
//! commits them once they are `LAZY_FLUSH` old.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::writer::Msg;

/// How long a record nobody waits for may wait for a `use` to go out with.
pub const LAZY_FLUSH: Duration = Duration::from_millis(5);
/// A request waiting this long for its `use` acknowledgement commits it itself (or wakes the
/// writer thread): the backstop for a runtime thread that stays busy, or a runtime without the
/// park hook. (Tokio's timer has millisecond resolution, so this is 0.5–1.5 ms in practice.)
pub const KICK_AFTER: Duration = Duration::from_micros(500);
/// The writer thread never sleeps longer than this: records nobody waits for are written at most
/// `MAX_SLEEP + LAZY_FLUSH` after they are queued.
const MAX_SLEEP: Duration = Duration::from_millis(20);

/// Some queue has work for the park hook (cheap check before it looks at the queues).
pub(crate) static PENDING: AtomicBool = AtomicBool::new(false);

pub(crate) struct Queue {
    state: Mutex<State>,
    cv: Condvar,
    /// A `use` record is queued: the park hook should commit (or wake the writer).
    urgent_flag: AtomicBool,
}

struct State {
    items: Vec<Msg>,
    urgent: usize,
    first_lazy: Option<Instant>,
    writer_waiting: bool,
    /// A runtime thread left records to the writer thread (in `Writer::pending`).
    handed_over: bool,
    closed: bool,
}

/// Why `wait` returned.
#[derive(PartialEq, Eq)]
pub(crate) enum Wait {
    /// Something is due (or the idle time passed): take and commit.
    Ready,
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
                handed_over: false,
                closed: false,
            }),
            cv: Condvar::new(),
            urgent_flag: AtomicBool::new(false),
        }
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
            self.urgent_flag.store(true, Ordering::Release);
            PENDING.store(true, Ordering::Release);
        } else if g.first_lazy.is_none() {
            g.first_lazy = Some(Instant::now());
        }
        true
    }

    /// For the park hook: whether a `use` was queued since the last look (clears the flag).
    pub fn take_urgent(&self) -> bool {
        self.urgent_flag.swap(false, Ordering::AcqRel)
    }

    /// Wake the writer thread now if it sleeps.
    pub fn kick(&self) {
        if let Ok(g) = self.state.lock() {
            if g.writer_waiting {
                self.cv.notify_one();
            }
        }
    }

    /// A runtime thread left records to the writer thread: wake it to commit them now.
    pub fn hand_over(&self) {
        if let Ok(mut g) = self.state.lock() {
            g.handed_over = true;
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

    /// Writer thread: sleep until a record is urgent, the oldest lazy one has waited
    /// `LAZY_FLUSH`, `idle` has passed, or the queue is closed.
    pub fn wait(&self, idle: Duration) -> Wait {
        let Ok(mut g) = self.state.lock() else {
            return Wait::Closed;
        };
        let start = Instant::now();
        loop {
            if g.closed {
                return Wait::Closed;
            }
            if g.urgent > 0
                || std::mem::take(&mut g.handed_over)
                || g.first_lazy.is_some_and(|t| t.elapsed() >= LAZY_FLUSH)
            {
                return Wait::Ready;
            }
            let wait = match g.first_lazy {
                Some(t) => LAZY_FLUSH.saturating_sub(t.elapsed()),
                None => idle.saturating_sub(start.elapsed()),
            };
            if wait.is_zero() {
                return Wait::Ready;
            }
            g.writer_waiting = true;
            g = match self.cv.wait_timeout(g, wait.min(MAX_SLEEP)) {
                Ok((g, _)) => g,
                Err(_) => return Wait::Closed,
            };
            g.writer_waiting = false;
        }
    }

    /// Move every queued record into `out` (never blocks on the writer); `true` once closed.
    pub fn take(&self, out: &mut Vec<Msg>) -> bool {
        let Ok(mut g) = self.state.lock() else {
            return true;
        };
        out.append(&mut g.items);
        g.urgent = 0;
        g.first_lazy = None;
        self.urgent_flag.store(false, Ordering::Release);
        g.closed
    }
}

#[cfg(test)]
mod tests {
    use super::{LAZY_FLUSH, MAX_SLEEP};

    #[test]
    fn readme_states_the_lazy_record_bound() {
        let bound = (MAX_SLEEP + LAZY_FLUSH).as_millis();
        let readme = include_str!("../../README.md").replace('\n', " ");
        assert!(
            readme.contains(&format!("they are written within {bound} ms")),
            "README.md must state the {bound} ms bound for records nobody waits for"
        );
    }
}
