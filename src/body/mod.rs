//! The response body type every layer answers with. `GatewayBody::Full` carries the gateway's own
//! answers (errors); `GatewayBody::Upstream` forwards each frame of the NIM's response as it
//! arrives (never buffered), counts bytes, notes when the first byte left (time to first token),
//! sniffs token usage on the side (`sniff`) and emits the request's outcome exactly once when the stream ends, fails or is dropped by a departing client.
//!
//! A leaf module: it knows nothing of the proxy, so `error` and `proxy` both use it without
//! importing each other.

pub mod json;
pub mod redact;
pub mod sniff;
pub mod usage;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use crate::audit::Usage;
use redact::Redactor;
pub use sniff::Sniffer;
use usage::UsageStrip;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Called once with the outcome when a response body finishes.
pub trait OnDone: Send + 'static {
    fn done(self: Box<Self>, outcome: Outcome);
}

pub struct Outcome {
    pub bytes_out: u64,
    pub usage: Option<Usage>,
    pub model: Option<String>,
    /// Occurrences of the injected key overwritten in the body.
    pub redactions: u64,
    /// `None` = complete; else why it ended early.
    pub error: Option<&'static str>,
    /// When the first body byte went to the client (time to first token, for streams).
    pub first_byte: Option<Instant>,
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
    redact: Option<Redactor>,
    /// Removes the usage event nimgate asked for on the client's behalf (`usage`).
    strip: Option<UsageStrip>,
    /// A non-data frame that waits for held-back body bytes to go first.
    pending: Option<Frame<Bytes>>,
    first_byte: Option<Instant>,
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
                redactions: self.redact.as_ref().map_or(0, |r| r.count),
                error,
                first_byte: self.first_byte,
            });
        }
    }
}

impl Track {
    /// A data chunk on its way to the client: key redacted, nimgate's own usage event removed.
    fn pass(&mut self, d: Bytes, end: bool) -> Bytes {
        let d = match self.redact.as_mut() {
            Some(red) => red.feed(d, end),
            None => d,
        };
        match self.strip.as_mut() {
            Some(s) if end => strip_last(s, d),
            Some(s) => s.feed(d),
            None => d,
        }
    }

    /// Bytes held back (a possible key start, an incomplete event) once nothing more comes.
    fn flush(&mut self) -> Option<Bytes> {
        let held = self.redact.as_mut().and_then(Redactor::flush);
        let Some(s) = self.strip.as_mut() else {
            return held;
        };
        let d = strip_last(s, held.unwrap_or_default());
        (!d.is_empty()).then_some(d)
    }
}

/// The last bytes through `s`, with whatever incomplete event it still holds.
fn strip_last(s: &mut UsageStrip, d: Bytes) -> Bytes {
    let d = s.feed(d);
    match s.flush() {
        Some(rest) if d.is_empty() => rest,
        Some(rest) => [d, rest].concat().into(),
        None => d,
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

    /// End an upstream body early for `reason` (its outcome is reported now, with that reason);
    /// dropping it afterwards ends the upstream request.
    pub fn abort(&mut self, reason: &'static str) {
        if let Self::Upstream { track: Some(t), .. } = self {
            t.finish(Some(reason));
        }
    }
    pub fn upstream(
        inner: Incoming,
        sniff: Sniffer,
        redact: Option<Redactor>,
        strip_usage: bool,
        on_done: Box<dyn OnDone>,
    ) -> Self {
        Self::Upstream {
            inner,
            track: Some(Track {
                bytes: 0,
                strip: (sniff.is_sse() && strip_usage).then(UsageStrip::default),
                sniff,
                redact,
                pending: None,
                first_byte: None,
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
            GatewayBodyProj::Upstream { mut inner, track } => loop {
                if let Some(f) = track.as_mut().and_then(|t| t.pending.take()) {
                    return Poll::Ready(Some(Ok(f)));
                }
                let r = ready!(inner.as_mut().poll_frame(cx));
                let Some(t) = track.as_mut() else {
                    return Poll::Ready(r);
                };
                let end = inner.is_end_stream();
                match r {
                    Some(Ok(f)) => {
                        let f = match f.into_data() {
                            Ok(d) => {
                                t.bytes += d.len() as u64;
                                t.sniff.feed(&d);
                                let d = t.pass(d, end);
                                if d.is_empty() && !end {
                                    continue;
                                }
                                if t.first_byte.is_none() && !d.is_empty() {
                                    t.first_byte = Some(Instant::now());
                                }
                                Frame::data(d)
                            }
                            Err(other) => match t.flush() {
                                Some(held) => {
                                    t.pending = Some(other);
                                    Frame::data(held)
                                }
                                None => other,
                            },
                        };
                        // With a Content-Length, hyper stops polling at the last byte.
                        if end && t.pending.is_none() {
                            t.finish(None);
                        }
                        return Poll::Ready(Some(Ok(f)));
                    }
                    Some(Err(e)) => {
                        t.finish(Some("upstream_error"));
                        return Poll::Ready(Some(Err(e)));
                    }
                    None => {
                        if let Some(held) = t.flush() {
                            return Poll::Ready(Some(Ok(Frame::data(held))));
                        }
                        t.finish(None);
                        return Poll::Ready(None);
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full { data } => data.is_none(),
            Self::Upstream { inner, track } => {
                inner.is_end_stream()
                    && track.as_ref().is_none_or(|t| {
                        t.pending.is_none()
                            && !t.redact.as_ref().is_some_and(Redactor::holding)
                            && !t.strip.as_ref().is_some_and(UsageStrip::holding)
                    })
            }
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
