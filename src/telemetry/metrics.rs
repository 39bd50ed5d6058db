//! Prometheus metrics from plain atomics: no lock and no allocation on the request path. Every
//! labelled family is a flat array of atomics allocated at start, indexed by label slots
//! (`labels.rs`): client (config order, then `unauthenticated`), operation, upstream (configured
//! names, then `none` for requests that never reached one), status class, model. The
//! `reason`/`kind` labels are `GatewayError::code()` for every variant of `GatewayError::ALL`.
//! `render.rs` writes the text format.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::labels::{Models, Op, Slots, MODEL_SLOTS};
use crate::audit::Usage;
use crate::error::GatewayError;
use crate::hist::{Histogram, SECONDS, TOKENS};

pub(super) const N: usize = GatewayError::ALL.len();
/// Status classes 1xx..5xx.
pub(super) const CLASSES: usize = 5;
/// Limit refusals counted per client.
pub(super) const REJECTIONS: [GatewayError; 3] = [
    GatewayError::RateLimited {
        retry_after_secs: 0,
    },
    GatewayError::ClientConcurrency,
    GatewayError::Overloaded,
];

/// HELP text of the request duration histogram (pinned by a test against what `response` measures).
pub const DURATION_HELP: &str =
    "Time from the request's arrival to the end of its response (last body byte, or the error).";

/// Who and what a request is, as label slots (cheap to copy).
#[derive(Clone, Copy, Debug)]
pub struct ReqLabels {
    /// The client's `index`, or `Metrics::unauthenticated()`.
    pub client: usize,
    pub op: Op,
}

/// What a proxied response's end reports.
pub struct Finished<'a> {
    pub labels: ReqLabels,
    pub upstream: &'a str,
    pub status: u16,
    pub took: Duration,
    pub model: Option<&'a str>,
    pub usage: Option<Usage>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Arrival to the first body byte, for a streamed (SSE) response.
    pub first_token: Option<Duration>,
}

pub struct Metrics {
    pub(super) clients: Slots,
    pub(super) upstreams: Slots,
    pub(super) models: Models,
    pub(super) responses: [AtomicU64; 6],
    pub(super) denied: [AtomicU64; N],
    pub(super) upstream_errors: [AtomicU64; N],
    /// [client][op][upstream][class]
    pub(super) requests: Box<[AtomicU64]>,
    /// [op]
    pub(super) duration: [Histogram; 4],
    /// [upstream]
    pub(super) ttfb: Box<[Histogram]>,
    /// [model]
    pub(super) ttft: Box<[Histogram]>,
    /// [model][input, output]
    pub(super) token_usage: Box<[Histogram]>,
    /// [client][model][input, output]
    pub(super) tokens: Box<[AtomicU64]>,
    /// [client]
    pub(super) bytes_in: Box<[AtomicU64]>,
    pub(super) bytes_out: Box<[AtomicU64]>,
    /// [client][REJECTIONS]
    pub(super) rejections: Box<[AtomicU64]>,
    pub(super) in_flight: AtomicI64,
    pub(super) open_streams: AtomicI64,
    pub(super) key_redactions: AtomicU64,
    /// Config reload attempts by outcome (`RELOAD_OUTCOMES` order).
    pub(super) reloads: [AtomicU64; 3],
    /// Unix time of the last applied reload (0: none yet).
    pub(super) last_reload: AtomicU64,
    /// The listener's TLS (set by `server::run` when TLS is on), for its reload counters.
    pub server_tls: std::sync::OnceLock<crate::tls::ServerTls>,
}

/// The `outcome` label values of `nimgate_config_reloads_total`.
pub const RELOAD_OUTCOMES: [&str; 3] = ["applied", "refused", "unchanged"];

/// `s.slot(name)`, saying so when the room for names added since start is used up.
fn slot_or_warn(s: &Slots, name: &str) -> usize {
    let i = s.slot(name);
    if i == s.other() {
        tracing::warn!(
            name,
            "no metrics label slot left until restart: counted as `other`"
        );
    }
    i
}

fn zeros(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Default for Metrics {
    /// No configured clients, one upstream named `default`.
    fn default() -> Self {
        Self::new(&[], &[Arc::from("default")], &[])
    }
}

impl Metrics {
    /// Slots for the configured clients (in config order) and upstreams, and model labels seeded
    /// with the configured models.
    /// Room is left for clients and upstreams a reload adds (`Slots`): as many clients again as
    /// configured (at least 32) and 8 upstreams.
    pub fn new(clients: &[Arc<str>], upstreams: &[Arc<str>], models: &[&str]) -> Self {
        let clients = Slots::new(clients, clients.len().max(32));
        let upstreams = Slots::new(upstreams, 8);
        let (c, u) = (clients.total(), upstreams.total());
        Self {
            clients,
            upstreams,
            models: Models::new(models),
            responses: Default::default(),
            denied: std::array::from_fn(|_| AtomicU64::new(0)),
            upstream_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            requests: zeros(c * Op::ALL.len() * u * CLASSES),
            duration: std::array::from_fn(|_| Histogram::new(SECONDS)),
            ttfb: (0..u).map(|_| Histogram::new(SECONDS)).collect(),
            ttft: (0..MODEL_SLOTS).map(|_| Histogram::new(SECONDS)).collect(),
            token_usage: (0..MODEL_SLOTS * 2)
                .map(|_| Histogram::new(TOKENS))
                .collect(),
            tokens: zeros(c * MODEL_SLOTS * 2),
            bytes_in: zeros(c),
            bytes_out: zeros(c),
            rejections: zeros(c * REJECTIONS.len()),
            in_flight: AtomicI64::new(0),
            open_streams: AtomicI64::new(0),
            key_redactions: AtomicU64::new(0),
            reloads: Default::default(),
            last_reload: AtomicU64::new(0),
            server_tls: std::sync::OnceLock::new(),
        }
    }

    /// The client slot of requests that did not authenticate.
    pub fn unauthenticated(&self) -> usize {
        self.clients.tail()
    }

    /// The metrics slot of client `id` (its `ClientEntry::index`): the same id keeps its slot
    /// across reloads; a new one gets a free slot.
    pub fn client_slot(&self, id: &str) -> usize {
        slot_or_warn(&self.clients, id)
    }

    /// Give a new upstream name its slot (at a reload, before requests name it).
    pub fn add_upstream(&self, name: &str) {
        slot_or_warn(&self.upstreams, name);
    }

    fn client(&self, i: usize) -> usize {
        i.min(self.clients.tail())
    }

    /// The slot of a configured upstream; `other` for any other name.
    pub(super) fn upstream_slot(&self, name: &str) -> usize {
        self.upstreams.find(name).unwrap_or(self.upstreams.other())
    }

    pub(super) fn request_index(&self, c: usize, op: usize, up: usize, class: usize) -> usize {
        ((c * Op::ALL.len() + op) * self.upstreams.total() + up) * CLASSES + class
    }

    /// A response is finished (its last byte sent, or an error answered) after `took`;
    /// `upstream`: the upstream it came from or was meant for (`None`: refused before routing).
    pub fn response(&self, l: ReqLabels, upstream: Option<&str>, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5);
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        let up = upstream.map_or(self.upstreams.tail(), |n| self.upstream_slot(n));
        let i = self.request_index(self.client(l.client), l.op.index(), up, class - 1);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        self.duration[l.op.index()].observe(took.as_secs_f64());
    }

    /// A request refused before its key was used; limit refusals are also counted per client.
    pub fn denied(&self, client: usize, e: GatewayError) {
        self.denied[e.index()].fetch_add(1, Ordering::Relaxed);
        if let Some(k) = REJECTIONS.iter().position(|r| r.index() == e.index()) {
            let i = self.client(client) * REJECTIONS.len() + k;
            self.rejections[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn upstream_error(&self, e: GatewayError) {
        self.upstream_errors[e.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The upstream's response head arrived `took` after the request was sent.
    pub fn upstream_ttfb(&self, upstream: &str, took: Duration) {
        self.ttfb[self.upstream_slot(upstream)].observe(took.as_secs_f64());
    }

    /// The end of a proxied response: the request counters, bytes, tokens and stream TTFT.
    pub fn finished(&self, f: &Finished<'_>) {
        self.response(f.labels, Some(f.upstream), f.status, f.took);
        let c = self.client(f.labels.client);
        self.bytes_in[c].fetch_add(f.bytes_in, Ordering::Relaxed);
        self.bytes_out[c].fetch_add(f.bytes_out, Ordering::Relaxed);
        // Only answers the NIM produced name a model slot, so junk names sent by a client
        // cannot use up the first-seen slots.
        if f.usage.is_none() && f.first_token.is_none() {
            return;
        }
        let m = self.models.slot(f.model.unwrap_or("unknown"));
        if let Some(t) = f.first_token {
            self.ttft[m].observe(t.as_secs_f64());
        }
        if let Some(u) = f.usage {
            for (k, n) in [u.prompt_tokens, u.completion_tokens]
                .into_iter()
                .enumerate()
            {
                self.token_usage[m * 2 + k].observe(n as f64);
                self.tokens[(c * MODEL_SLOTS + m) * 2 + k].fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// A config reload attempt ended with `outcome` (one of `RELOAD_OUTCOMES`).
    pub fn reload(&self, outcome: &str) {
        if let Some(i) = RELOAD_OUTCOMES.iter().position(|o| *o == outcome) {
            self.reloads[i].fetch_add(1, Ordering::Relaxed);
        }
        if outcome == "applied" {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.last_reload.store(now, Ordering::Relaxed);
        }
    }

    /// Occurrences of the injected key removed from NIM responses (headers, bodies, `Location`).
    pub fn key_redactions(&self, n: u64) {
        if n > 0 {
            self.key_redactions.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Count a request as in flight until the guard drops.
    pub fn in_flight(self: &Arc<Self>) -> Gauge {
        Gauge::up(self, |m| &m.in_flight)
    }

    /// Count an open SSE stream until the guard drops.
    pub fn open_stream(self: &Arc<Self>) -> Gauge {
        Gauge::up(self, |m| &m.open_streams)
    }
}

/// One unit of a gauge, given back on drop.
pub struct Gauge {
    m: Arc<Metrics>,
    which: fn(&Metrics) -> &AtomicI64,
}

impl Gauge {
    fn up(m: &Arc<Metrics>, which: fn(&Metrics) -> &AtomicI64) -> Self {
        which(m).fetch_add(1, Ordering::Relaxed);
        Self {
            m: m.clone(),
            which,
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        (self.which)(&self.m).fetch_sub(1, Ordering::Relaxed);
    }
}
