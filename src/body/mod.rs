//! The response body type every layer answers with. `GatewayBody::Full` carries the gateway's own
//! answers (errors); `GatewayBody::Upstream` forwards each frame of the NIM's response as it
//! arrives (never buffered), counts bytes, sniffs token usage on the side (`sniff`) and emits the
//! request's outcome exactly once when the stream ends, fails or is dropped by a departing client.
//!
//! A leaf module: it knows nothing of the proxy, so `error` and `proxy` both use it without
//! importing each other.

pub mod sniff;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use crate::audit::Usage;
use sniff::Sniffer;

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
