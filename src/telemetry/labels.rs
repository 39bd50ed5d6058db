//! The low-cardinality label values of the metrics, each resolved to a slot index so the request
//! path only indexes pre-allocated atomics: the operation (from the route), the client (its
//! position in the config, carried by the `Principal`), the upstream (its name among the
//! configured ones) and the model (configured or first-seen values up to `MODEL_CAP`, the rest
//! `other`). A model lookup is one `ArcSwap` load and a scan; only the first sighting of a new
//! model takes a lock, once.

use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};

/// The GenAI operation of a route (`gen_ai.operation.name`), or `other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Chat,
    TextCompletion,
    Embeddings,
    Other,
}

impl Op {
    pub const ALL: [Self; 4] = [
        Self::Chat,
        Self::TextCompletion,
        Self::Embeddings,
        Self::Other,
    ];

    /// The operation of a normalised path (`/v1/chat/completions` → `chat`).
    pub fn of_path(path: &str) -> Self {
        if path.ends_with("/chat/completions") {
            Self::Chat
        } else if path.ends_with("/completions") {
            Self::TextCompletion
        } else if path.ends_with("/embeddings") {
            Self::Embeddings
        } else {
            Self::Other
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::TextCompletion => "text_completion",
            Self::Embeddings => "embeddings",
            Self::Other => "other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Distinct model label values before the rest are counted as `other`.
pub const MODEL_CAP: usize = 32;
/// Slots of a per-model family: `MODEL_CAP` names, then `other`.
pub const MODEL_SLOTS: usize = MODEL_CAP + 1;

/// Model names seen so far, in slot order: `Slots` with room for `MODEL_CAP` names, `other` at
/// `MODEL_CAP` and no tail slot.
pub struct Models(Slots);

impl Models {
    /// Seeded with the configured models (the first `MODEL_CAP` of them).
    pub fn new(configured: &[&str]) -> Self {
        let mut v: Vec<Arc<str>> = Vec::new();
        for m in configured {
            if v.len() < MODEL_CAP && !v.iter().any(|n| &**n == *m) {
                v.push(Arc::from(*m));
            }
        }
        let spare = MODEL_CAP - v.len();
        Self(Slots::new(&v, spare))
    }

    /// The slot of `model`: a known name's, a new one's while there is room, else `other`'s.
    pub fn slot(&self, model: &str) -> usize {
        self.0.slot(model)
    }

    /// The label value of each used slot, `other` last.
    pub fn names(&self) -> Vec<(usize, Arc<str>)> {
        let mut v = self.0.named();
        v.push((MODEL_CAP, Arc::from("other")));
        v
    }
}

/// The label values of the clients or of the upstreams: the configured names, then room for
/// names a config reload adds (their atomics are allocated at start), then `other` for names
/// beyond that room and the dimension's own tail (`unauthenticated`, `none`). A name keeps its
/// slot for the life of the process, so a reload never moves a series to another label; a name
/// a reload removes keeps its counters. Lookup by name: one `ArcSwap` load and a scan.
pub struct Slots {
    cap: usize,
    names: ArcSwap<Vec<Arc<str>>>,
    grow: Mutex<()>,
}

impl Slots {
    /// `names` in order, with room for `spare` more.
    pub fn new(names: &[Arc<str>], spare: usize) -> Self {
        Self {
            cap: names.len() + spare,
            names: ArcSwap::from_pointee(names.to_vec()),
            grow: Mutex::new(()),
        }
    }

    /// Slots in all: the named ones, `other`, and the tail.
    pub fn total(&self) -> usize {
        self.cap + 2
    }

    /// The slot of names beyond the room.
    pub fn other(&self) -> usize {
        self.cap
    }

    /// The dimension's own last slot (`unauthenticated`, `none`).
    pub fn tail(&self) -> usize {
        self.cap + 1
    }

    /// The slot of a known name, if it has one.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.names.load().iter().position(|n| &**n == name)
    }

    /// The slot of `name`, giving it the next free one if it has none (else `other`).
    pub fn slot(&self, name: &str) -> usize {
        if let Some(i) = self.find(name) {
            return i;
        }
        let Ok(_g) = self.grow.lock() else {
            return self.other();
        };
        let cur = self.names.load_full();
        if let Some(i) = cur.iter().position(|n| &**n == name) {
            return i;
        }
        if cur.len() >= self.cap {
            return self.other();
        }
        let mut next = (*cur).clone();
        next.push(Arc::from(name));
        self.names.store(Arc::new(next));
        cur.len()
    }

    /// The named slots in use, with their names.
    pub fn named(&self) -> Vec<(usize, Arc<str>)> {
        self.names.load().iter().cloned().enumerate().collect()
    }

    /// Every slot in use with its label value (`other` and the tail last; `tail` names it).
    pub fn labelled(&self, tail: &'static str) -> Vec<(usize, Arc<str>)> {
        let mut v = self.named();
        v.push((self.other(), Arc::from("other")));
        v.push((self.tail(), Arc::from(tail)));
        v
    }
}

/// A label value escaped for the text exposition format (`\`, `"` and newlines).
pub fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_fill_to_the_cap_then_other() {
        let m = Models::new(&["meta/llama"]);
        assert_eq!(m.slot("meta/llama"), 0);
        assert_eq!(m.slot("b"), 1);
        assert_eq!(m.slot("b"), 1);
        for i in 2..MODEL_CAP {
            assert_eq!(m.slot(&format!("m{i}")), i);
        }
        assert_eq!(m.slot("one-too-many"), MODEL_CAP);
        assert_eq!(m.slot("meta/llama"), 0);
        assert_eq!(m.names().len(), MODEL_SLOTS);
    }

    #[test]
    fn slots_keep_names_add_into_room_then_other() {
        let s = Slots::new(&[Arc::from("a"), Arc::from("b")], 1);
        assert_eq!((s.slot("a"), s.slot("b")), (0, 1));
        assert_eq!(s.slot("c"), 2);
        assert_eq!(s.slot("c"), 2);
        assert_eq!(s.slot("d"), s.other());
        assert_eq!((s.other(), s.tail(), s.total()), (3, 4, 5));
        assert_eq!(s.find("d"), None);
        let l: Vec<_> = s
            .labelled("none")
            .into_iter()
            .map(|(i, n)| format!("{i}={n}"))
            .collect();
        assert_eq!(l, ["0=a", "1=b", "2=c", "3=other", "4=none"]);
    }

    #[test]
    fn operations_and_escaping() {
        assert_eq!(Op::of_path("/v1/chat/completions"), Op::Chat);
        assert_eq!(Op::of_path("/v1/completions"), Op::TextCompletion);
        assert_eq!(Op::of_path("/v1/embeddings"), Op::Embeddings);
        assert_eq!(Op::of_path("/v1/models"), Op::Other);
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
