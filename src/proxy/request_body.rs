//! The request body sent upstream: either fully known (the peeked prefix was the whole body, so
//! it can be replayed once after a key refresh) or the peeked prefix followed by the rest of the
//! client's stream, held to `limits.max_body_bytes` and the whole-body deadline. Request trailers
//! are dropped on both paths: only data frames go upstream.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use crate::body::BoxError;

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

/// Bytes of the request body read so far: known at once when it fit in the prefix (no shared
/// counter to allocate), else counted by the stream as it goes.
#[derive(Clone)]
pub enum BytesIn {
    Known(u64),
    Counted(Arc<AtomicU64>),
}

impl BytesIn {
    pub fn get(&self) -> u64 {
        match self {
            Self::Known(n) => *n,
            Self::Counted(c) => c.load(Ordering::Relaxed),
        }
    }
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
                loop {
                    match ready!(Pin::new(&mut *rest).poll_frame(cx)) {
                        Some(Ok(f)) => {
                            let Some(d) = f.data_ref() else {
                                // Trailers never go upstream: a client could put credential
                                // names there (`authorization`, `x-api-key`) that no header
                                // rule sees. Dropped, like the prefix reader drops them.
                                continue;
                            };
                            *seen += d.len() as u64;
                            counter.store(*seen, Ordering::Relaxed);
                            if *seen > *limit {
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                            }
                            return Poll::Ready(Some(Ok(f)));
                        }
                        Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
                        None => return Poll::Ready(None),
                    }
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
