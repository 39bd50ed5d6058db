//! Per-connection and per-address bookkeeping in front of authentication:
//! - `PerIp`: open connections per remote IP (`limits.max_connections_per_ip`), so one address
//!   cannot hold all of `max_connections` (idle HTTP/2 connections included);
//! - `Activity`: the streams open on one HTTP/2 connection (a request counts until its
//!   response body has ended or been torn down), and `idle` resolving once none has been open for
//!   `limits.idle_timeout` — hyper's HTTP/2 server has no idle timeout of its own;
//! - `Watched` + `Activity::watchdog`: an HTTP/2 response body that has handed hyper a frame (or
//!   was never polled) and is not polled again for `limits.send_timeout` is torn down from outside:
//!   a client that keeps its flow-control window at zero never blocks the socket, so the
//!   connection's stall timeout never fires and hyper never polls the body again. The watchdog
//!   drops the body (ending the upstream request, releasing its concurrency permits, `done`
//!   record `client_stalled`) and the stream's count; hyper resets the stream if it polls later.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::body::{BoxError, GatewayBody};

/// Open connections per remote IP.
pub struct PerIp {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its address's count; released on drop.
pub struct IpPermit {
    owner: Option<(Arc<PerIp>, IpAddr)>,
}

impl PerIp {
    /// `limit` = 0: no per-address cap.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A permit for one more connection from `ip`, or `None` if it already has `limit` open.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpPermit> {
        if self.limit == 0 {
            return Some(IpPermit { owner: None });
        }
        let mut m = self.open.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(IpPermit {
            owner: Some((self.clone(), ip)),
        })
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        if let Some((per_ip, ip)) = self.owner.take() {
            if let Ok(mut m) = per_ip.open.lock() {
                if let Some(n) = m.get_mut(&ip) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        m.remove(&ip);
                    }
                }
            }
        }
    }
}

/// Streams open on one connection and when the last one ended.
pub struct Activity {
    open: AtomicUsize,
    origin: Instant,
    /// Milliseconds after `origin` when the count last changed.
    last_ms: AtomicU64,
    /// HTTP/2 response bodies the watchdog looks after (empty on HTTP/1).
    watched: Mutex<Vec<Weak<Slot>>>,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            watched: Mutex::new(Vec::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Release);
    }

    /// An HTTP/2 response body the watchdog looks after; it holds the stream's `guard`.
    pub fn watch(self: &Arc<Self>, body: GatewayBody, guard: StreamGuard) -> Watched {
        let slot = Arc::new(Slot {
            live: Mutex::new(Some((Box::pin(body), guard))),
            // Handed to hyper, not polled yet: waiting on the client from now.
            waiting_since: AtomicU64::new(self.now_ms()),
        });
        if let Ok(mut w) = self.watched.lock() {
            w.retain(|s| s.strong_count() > 0);
            w.push(Arc::downgrade(&slot));
        }
        Watched {
            slot,
            activity: self.clone(),
        }
    }

    /// Never resolves: every `tick`, tear down the watched bodies that have waited on the client
    /// for `timeout` or longer.
    pub async fn watchdog(&self, timeout: Duration) {
        let tick = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let limit = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::time::sleep(tick).await;
            let now = self.now_ms();
            let stalled: Vec<Arc<Slot>> = match self.watched.lock() {
                Ok(mut w) => {
                    w.retain(|s| s.strong_count() > 0);
                    w.iter()
                        .filter_map(Weak::upgrade)
                        .filter(|s| {
                            let since = s.waiting_since.load(Ordering::Acquire);
                            since != NOT_WAITING && now.saturating_sub(since) >= limit
                        })
                        .collect()
                }
                Err(_) => Vec::new(),
            };
            for s in stalled {
                let taken = s.live.lock().ok().and_then(|mut l| l.take());
                if let Some((mut body, guard)) = taken {
                    body.as_mut().get_mut().abort("client_stalled");
                    tracing::debug!("HTTP/2 stream not read for send_timeout: reset");
                    drop(body);
                    drop(guard);
                }
            }
        }
    }

    /// A stream opened; it counts until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.touch();
        StreamGuard(self.clone())
    }

    /// Resolves once no stream has been open for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let since = self
                .origin
                .elapsed()
                .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Acquire)));
            if self.open.load(Ordering::Acquire) == 0 && since >= timeout {
                return;
            }
            let wait = if self.open.load(Ordering::Acquire) == 0 {
                timeout.saturating_sub(since)
            } else {
                timeout
            };
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        }
    }
}

pub struct StreamGuard(Arc<Activity>);

/// `Slot::waiting_since` when the body is waiting on the upstream (or finished), not the client.
const NOT_WAITING: u64 = u64::MAX;

/// What one watched HTTP/2 response shares with its connection's watchdog.
struct Slot {
    /// `None` once ended or torn down.
    live: Mutex<Option<(Pin<Box<GatewayBody>>, StreamGuard)>>,
    /// Milliseconds after `Activity::origin` since the body last handed hyper a frame (or was
    /// created), i.e. since hyper owes it a poll; `NOT_WAITING` while it waits on the upstream.
    waiting_since: AtomicU64,
}

/// An HTTP/2 response body under the watchdog (see the module header).
pub struct Watched {
    slot: Arc<Slot>,
    activity: Arc<Activity>,
}

/// The error an HTTP/2 stream torn down by the watchdog ends with (hyper resets the stream).
#[derive(Debug)]
struct Stalled;

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client did not read the response for send_timeout")
    }
}

impl std::error::Error for Stalled {}

impl Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Ok(mut live) = self.slot.live.lock() else {
            return Poll::Ready(Some(Err(Box::new(Stalled))));
        };
        let Some((body, _)) = live.as_mut() else {
            return Poll::Ready(Some(Err(Box::new(Stalled))));
        };
        let r = body.as_mut().poll_frame(cx);
        let since = match &r {
            Poll::Ready(Some(Ok(_))) => self.activity.now_ms(),
            _ => NOT_WAITING,
        };
        self.slot.waiting_since.store(since, Ordering::Release);
        match r {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                // Ended: the stream no longer counts as open.
                live.take();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.slot
            .live
            .lock()
            .ok()
            .and_then(|l| l.as_ref().map(|(b, _)| b.is_end_stream()))
            .unwrap_or(false)
    }

    fn size_hint(&self) -> SizeHint {
        self.slot
            .live
            .lock()
            .ok()
            .and_then(|l| l.as_ref().map(|(b, _)| b.size_hint()))
            .unwrap_or_default()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_cap_is_released_on_drop() {
        let p = PerIp::new(2);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let a = p.try_acquire(ip).unwrap();
        let _b = p.try_acquire(ip).unwrap();
        assert!(p.try_acquire(ip).is_none());
        assert!(p.try_acquire("10.1.2.4".parse().unwrap()).is_some());
        drop(a);
        assert!(p.try_acquire(ip).is_some());
    }
}
