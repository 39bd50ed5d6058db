//! The `read_prefix` phase: read up to `PEEK_BYTES` of the request body before anything is sent,
//! so the `use` record (and, with several upstreams, the route) can name the model, and a small
//! body can be replayed once after a key refresh. Larger bodies stream on after the prefix.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::request_body::RequestBody;
use crate::error::GatewayError;

/// How much of a request body is read before forwarding: enough to hold a whole chat request.
pub const PEEK_BYTES: usize = 64 * 1024;

/// The body as it will be sent, plus what the prefix told us.
pub struct Prefix {
    pub body: RequestBody,
    /// The whole body when it fit in the prefix (`Some(None)`: empty), for one replay.
    pub replay: Option<Option<Bytes>>,
    pub model: Option<Arc<str>>,
}

/// Read the prefix of `body` (bytes so far go to `counter`), within `deadline`'s budget.
pub async fn read_prefix(
    mut body: Incoming,
    limit: u64,
    counter: &Arc<AtomicU64>,
    deadline: tokio::time::Instant,
) -> Result<Prefix, GatewayError> {
    use http_body::Body as _;
    let mut prefix = VecDeque::new();
    let mut total = 0usize;
    while total < PEEK_BYTES && !body.is_end_stream() {
        match body.frame().await {
            None => break,
            Some(Err(_)) => return Err(GatewayError::BadRequest),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    total += d.len();
                    if total as u64 > limit {
                        return Err(GatewayError::BodyTooLarge);
                    }
                    prefix.push_back(d);
                }
            }
        }
    }
    counter.store(total as u64, Ordering::Relaxed);
    if body.is_end_stream() || total < PEEK_BYTES {
        let data = match prefix.len() {
            0 => Bytes::new(),
            1 => prefix.pop_front().unwrap_or_default(),
            _ => {
                let mut b = BytesMut::with_capacity(total);
                for c in prefix {
                    b.extend_from_slice(&c);
                }
                b.freeze()
            }
        };
        let model = model_of(&data);
        let data = (!data.is_empty()).then_some(data);
        return Ok(Prefix {
            body: RequestBody::Replay { data: data.clone() },
            replay: Some(data),
            model,
        });
    }
    let model = prefix.front().and_then(|b| model_of(b));
    Ok(Prefix {
        body: RequestBody::Stream {
            prefix,
            rest: body,
            seen: total as u64,
            limit,
            counter: counter.clone(),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        },
        replay: None,
        model,
    })
}

/// The top-level `model` of a JSON body (at most 256 bytes), as a JSON parser reads it.
pub fn model_of(body: &[u8]) -> Option<Arc<str>> {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        model: Option<Cow<'a, str>>,
    }
    if body.first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<Probe>(body)
        .ok()?
        .model
        .filter(|m| m.len() <= 256)
        .map(|m| Arc::from(m.as_ref()))
}
