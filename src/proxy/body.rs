//! Body types. Responses stream through unbuffered: `GatewayBody::Upstream` forwards each frame
//! as it arrives, counts bytes, sniffs token usage on the side (keeping refcounted clones of at
//! most 1 MiB of a JSON response, or scanning SSE lines) and emits the `done` audit record when
//! the stream ends, fails or is dropped by a departing client.

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use crate::audit::Usage;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Called once with the outcome when a response body finishes.
pub trait OnDone: Send + 'static {
    fn done(self: Box<Self>, outcome: Outcome);
}

pub struct Outcome {
    pub bytes_out: u64,
    pub usage: Option<Usage>,
    pub model: Option<String>,
    /// `None` = complete; else why it ended early.
    pub error: Option<&'static str>,
}

pin_project_lite::pin_project! {
    #[project = GatewayBodyProj]
    pub enum GatewayBody {
        Full { data: Option<Bytes> },
        Upstream { #[pin] inner: Incoming, track: Option<Track> },
    }
}

pub struct Track {
    bytes: u64,
    sniff: Sniffer,
    on_done: Option<Box<dyn OnDone>>,
}

impl Track {
    fn finish(&mut self, error: Option<&'static str>) {
        if let Some(cb) = self.on_done.take() {
            let (usage, model) = self.sniff.result();
            cb.done(Outcome {
                bytes_out: self.bytes,
                usage,
                model,
                error,
            });
        }
    }
}

impl Drop for Track {
    fn drop(&mut self) {
        self.finish(Some("client_disconnected"));
    }
}

impl GatewayBody {
    pub fn full(b: Bytes) -> Self {
        Self::Full { data: Some(b) }
    }
    pub fn empty() -> Self {
        Self::Full { data: None }
    }
    pub fn upstream(inner: Incoming, sse: bool, on_done: Box<dyn OnDone>) -> Self {
        Self::Upstream {
            inner,
            track: Some(Track {
                bytes: 0,
                sniff: if sse { Sniffer::sse() } else { Sniffer::json() },
                on_done: Some(on_done),
            }),
        }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            GatewayBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            GatewayBodyProj::Upstream { mut inner, track } => {
                let r = ready!(inner.as_mut().poll_frame(cx));
                if let Some(t) = track.as_mut() {
                    match &r {
                        Some(Ok(f)) => {
                            if let Some(d) = f.data_ref() {
                                t.bytes += d.len() as u64;
                                t.sniff.feed(d);
                            }
                            // With a Content-Length, hyper stops polling at the last byte.
                            if inner.is_end_stream() {
                                t.finish(None);
                            }
                        }
                        Some(Err(_)) => t.finish(Some("upstream_error")),
                        None => t.finish(None),
                    }
                }
                Poll::Ready(r)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full { data } => data.is_none(),
            Self::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Self::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

/// Watches response bytes go by for `usage` and `model`, without holding up any of them.
enum Sniffer {
    Json {
        chunks: Vec<Bytes>,
        size: usize,
        overflow: bool,
    },
    Sse {
        carry: BytesMut,
        usage: Option<Usage>,
        model: Option<String>,
    },
}

const JSON_SNIFF_MAX: usize = 1 << 20;

#[derive(serde::Deserialize)]
struct UsageProbe<'a> {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default, borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
}

impl<'de> serde::Deserialize<'de> for Usage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct U {
            #[serde(default)]
            prompt_tokens: u64,
            #[serde(default)]
            completion_tokens: u64,
            #[serde(default)]
            total_tokens: u64,
        }
        let u = U::deserialize(d)?;
        Ok(Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
        })
    }
}

impl Sniffer {
    fn json() -> Self {
        Self::Json {
            chunks: Vec::new(),
            size: 0,
            overflow: false,
        }
    }
    fn sse() -> Self {
        Self::Sse {
            carry: BytesMut::new(),
            usage: None,
            model: None,
        }
    }

    fn feed(&mut self, d: &Bytes) {
        match self {
            Self::Json {
                chunks,
                size,
                overflow,
            } => {
                if *overflow {
                    return;
                }
                *size += d.len();
                if *size > JSON_SNIFF_MAX {
                    *overflow = true;
                    chunks.clear();
                } else {
                    chunks.push(d.clone());
                }
            }
            Self::Sse {
                carry,
                usage,
                model,
            } => {
                let mut rest: &[u8] = d;
                while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                    let line: &[u8] = if carry.is_empty() {
                        &rest[..nl]
                    } else {
                        carry.extend_from_slice(&rest[..nl]);
                        &carry[..]
                    };
                    scan_sse_line(line, usage, model);
                    carry.clear();
                    rest = &rest[nl + 1..];
                }
                if !rest.is_empty() && carry.len() + rest.len() <= 256 * 1024 {
                    carry.extend_from_slice(rest);
                }
            }
        }
    }

    fn result(&mut self) -> (Option<Usage>, Option<String>) {
        match self {
            Self::Json {
                chunks,
                overflow: false,
                ..
            } if !chunks.is_empty() => {
                let probe = |b: &[u8]| {
                    serde_json::from_slice::<UsageProbe>(b)
                        .map(|p| (p.usage, p.model.map(String::from)))
                        .unwrap_or((None, None))
                };
                if let [one] = chunks.as_slice() {
                    return probe(one);
                }
                let mut all = Vec::with_capacity(chunks.iter().map(|c| c.len()).sum());
                for c in chunks.drain(..) {
                    all.extend_from_slice(&c);
                }
                probe(&all)
            }
            Self::Json { .. } => (None, None),
            Self::Sse { usage, model, .. } => (usage.take(), model.take()),
        }
    }
}

fn scan_sse_line(line: &[u8], usage: &mut Option<Usage>, model: &mut Option<String>) {
    let Some(payload) = line.strip_prefix(b"data:") else {
        return;
    };
    let payload = payload.strip_prefix(b" ").unwrap_or(payload);
    let payload = payload.strip_suffix(b"\r").unwrap_or(payload);
    if payload == b"[DONE]" {
        return;
    }
    let want_model = model.is_none();
    let has_usage = payload.windows(7).any(|w| w == b"\"usage\"");
    if !want_model && !has_usage {
        return;
    }
    if let Ok(p) = serde_json::from_slice::<UsageProbe>(payload) {
        if want_model {
            *model = p.model.map(String::from);
        }
        if let Some(u) = p.usage {
            *usage = Some(u);
        }
    }
}

/// Request body sent upstream: either fully known (replayable for one retry) or a peeked
/// prefix followed by the rest of the client's stream, limited to `max_body_bytes`.
pub enum RequestBody {
    Replay {
        data: Option<Bytes>,
    },
    Stream {
        prefix: VecDeque<Bytes>,
        rest: Incoming,
        seen: u64,
        limit: u64,
        counter: Arc<AtomicU64>,
        /// The whole body must arrive by then (`limits.body_timeout`): no slow-drip bodies.
        deadline: Pin<Box<tokio::time::Sleep>>,
    },
}

/// The client did not send its body within `limits.body_timeout`.
#[derive(Debug)]
pub struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body not received within limits.body_timeout")
    }
}
impl std::error::Error for BodyTimeout {}

/// The client sent more than `limits.max_body_bytes`.
#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body exceeds limits.max_body_bytes")
    }
}
impl std::error::Error for BodyTooLarge {}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Replay { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Stream {
                prefix,
                rest,
                seen,
                limit,
                counter,
                deadline,
            } => {
                if let Some(b) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                }
                match ready!(Pin::new(rest).poll_frame(cx)) {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            *seen += d.len() as u64;
                            counter.store(*seen, Ordering::Relaxed);
                            if *seen > *limit {
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                            }
                        }
                        Poll::Ready(Some(Ok(f)))
                    }
                    Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Replay { data } => data.is_none(),
            Self::Stream { prefix, rest, .. } => prefix.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Replay { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Self::Stream { prefix, rest, .. } => {
                let p: u64 = prefix.iter().map(|b| b.len() as u64).sum();
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + p);
                if let Some(u) = r.upper() {
                    h.set_upper(u + p);
                }
                h
            }
        }
    }
}
