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

/// Model names seen so far, in slot order.
pub struct Models {
    names: ArcSwap<Vec<Arc<str>>>,
    grow: Mutex<()>,
}

impl Models {
    /// Seeded with the configured models (the first `MODEL_CAP` of them).
    pub fn new(configured: &[&str]) -> Self {
        let mut v: Vec<Arc<str>> = Vec::new();
        for m in configured {
            if v.len() < MODEL_CAP && !v.iter().any(|n| &**n == *m) {
                v.push(Arc::from(*m));
            }
        }
        Self {
            names: ArcSwap::from_pointee(v),
            grow: Mutex::new(()),
        }
    }

    /// The slot of `model`: a known name's, a new one's while there is room, else `other`'s.
    pub fn slot(&self, model: &str) -> usize {
        if let Some(i) = self.names.load().iter().position(|n| &**n == model) {
            return i;
        }
        let Ok(_g) = self.grow.lock() else {
            return MODEL_CAP;
        };
        let cur = self.names.load_full();
        if let Some(i) = cur.iter().position(|n| &**n == model) {
            return i;
        }
        if cur.len() >= MODEL_CAP {
            return MODEL_CAP;
        }
        let mut next = (*cur).clone();
        next.push(Arc::from(model));
        self.names.store(Arc::new(next));
        cur.len()
    }

    /// The label value of each used slot, `other` last.
    pub fn names(&self) -> Vec<(usize, Arc<str>)> {
        let mut v: Vec<_> = self.names.load().iter().cloned().enumerate().collect();
        v.push((MODEL_CAP, Arc::from("other")));
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
    fn operations_and_escaping() {
        assert_eq!(Op::of_path("/v1/chat/completions"), Op::Chat);
        assert_eq!(Op::of_path("/v1/completions"), Op::TextCompletion);
        assert_eq!(Op::of_path("/v1/embeddings"), Op::Embeddings);
        assert_eq!(Op::of_path("/v1/models"), Op::Other);
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
