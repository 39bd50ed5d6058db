//! `GET /v1/models` with several upstreams (`[[upstreams]]`): the gateway answers it itself, with
//! the union of every upstream's own list in OpenAI's list shape, filtered to the models that
//! route to the upstream that listed them and to the client's `models` allow-list.
//!
//! Each upstream's list is fetched from a replica that is up, with that upstream's key (a `use`
//! record like any key use), and cached for `TTL`. An older list is served as it is while a
//! refresh runs in the background; only while no list at all has arrived yet does a request wait,
//! at most `FIRST_WAIT` (a dead upstream then simply contributes nothing).

use arc_swap::ArcSwapOption;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::replica;
use super::upstream::{pattern_matches, Routes, Upstream};
use crate::audit::Audit;

/// How long a fetched list is served before a refresh is started.
pub const TTL: Duration = Duration::from_secs(5);
/// Longest a request waits for lists that were never fetched.
const FIRST_WAIT: Duration = Duration::from_secs(2);

struct Listed {
    at: Instant,
    data: Vec<Value>,
}

struct Slot {
    up: Arc<Upstream>,
    list: ArcSwapOption<Listed>,
    refreshing: AtomicBool,
}

pub struct ModelLists {
    slots: Vec<Arc<Slot>>,
    audit: Audit,
}

impl ModelLists {
    pub fn new(routes: &Routes, audit: Audit) -> Self {
        let slots = routes
            .all()
            .iter()
            .map(|up| {
                Arc::new(Slot {
                    up: up.clone(),
                    list: ArcSwapOption::empty(),
                    refreshing: AtomicBool::new(false),
                })
            })
            .collect();
        Self { slots, audit }
    }

    /// The merged list as the client `allowed` may see it (OpenAI `{"object":"list","data":…}`).
    pub async fn list(&self, routes: &Routes, allowed: Option<&[String]>) -> Value {
        let started: Vec<_> = self
            .slots
            .iter()
            .filter_map(|s| self.refresh_if_old(s))
            .collect();
        if self.slots.iter().all(|s| s.list.load().is_none()) && !started.is_empty() {
            let _ = tokio::time::timeout(FIRST_WAIT, futures_util::future::join_all(started)).await;
        }
        let mut seen = HashSet::new();
        let mut data = Vec::new();
        for s in &self.slots {
            let Some(l) = s.list.load_full() else {
                continue;
            };
            for m in &l.data {
                let Some(id) = m.get("id").and_then(Value::as_str) else {
                    continue;
                };
                let routed_here = routes.lookup(id).is_some_and(|u| Arc::ptr_eq(u, &s.up));
                let permitted = allowed.is_none_or(|a| a.iter().any(|p| pattern_matches(p, id)));
                if routed_here && permitted && seen.insert(id.to_string()) {
                    data.push(m.clone());
                }
            }
        }
        serde_json::json!({"object": "list", "data": data})
    }

    /// Start a background refresh of `s` when its list is missing or older than `TTL` (and none
    /// is running); the returned handle ends with it.
    fn refresh_if_old(&self, s: &Arc<Slot>) -> Option<tokio::task::JoinHandle<()>> {
        let fresh = s.list.load().as_ref().is_some_and(|l| l.at.elapsed() < TTL);
        if fresh || s.refreshing.swap(true, Ordering::AcqRel) {
            return None;
        }
        let (s, audit) = (s.clone(), self.audit.clone());
        Some(tokio::spawn(async move {
            if let Some(data) = fetch(&s.up, &audit).await {
                s.list.store(Some(Arc::new(Listed {
                    at: Instant::now(),
                    data,
                })));
            }
            s.refreshing.store(false, Ordering::Release);
        }))
    }
}

/// One upstream's `data` array, from a replica that is up.
async fn fetch(up: &Upstream, audit: &Audit) -> Option<Vec<Value>> {
    let now = replica::now_ms();
    let rep = up.replicas.iter().find(|r| r.is_up(now))?;
    let timeout = up.response_timeout.min(FIRST_WAIT);
    let (status, body) = super::probe::get(up, rep, "/v1/models", true, audit, timeout).await?;
    if !status.is_success() {
        tracing::warn!(upstream = %up.name, replica = %rep.pool.label, status = status.as_u16(), "model list fetch refused");
        return None;
    }
    let v: Value = serde_json::from_slice(&body).ok()?;
    v.get("data")?.as_array().cloned()
}
