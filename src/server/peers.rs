//! Per-connection and per-address bookkeeping in front of authentication:
//! - `PerIp`: open connections per remote IP (`limits.max_connections_per_ip`), so one address
//!   cannot hold all of `max_connections` (idle HTTP/2 connections included);
//! - `Activity` + `Tracked`: the streams open on one HTTP/2 connection (a request counts until its
//!   response body has ended or been dropped), and `idle` resolving once none has been open for
//!   `limits.idle_timeout` — hyper's HTTP/2 server has no idle timeout of its own.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Release);
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

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its stream's `StreamGuard` until it ends or is dropped.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        guard: Option<StreamGuard>,
    }
}

impl<B> Tracked<B> {
    pub fn new(inner: B, guard: StreamGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if matches!(r, Poll::Ready(None)) {
            this.guard.take();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
