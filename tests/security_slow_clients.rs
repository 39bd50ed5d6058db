#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Security suite, section 7: slow and stalled clients.
//!
//! Part of the hostile-input security suite (DESIGN.md "Security invariants" 1–5 and 8), split
//! by section into tests/security_*.rs. Every case sends its attack over a real loopback socket —
//! raw HTTP/1.1 bytes or hand-written HTTP/2 frames — and asserts the safe outcome: the status the
//! client gets, whether the connection is closed, and exactly what the fake NIM (and, for
//! routing, a canary listener) received. Shared raw-socket and h2 helpers live in tests/common/.

mod common;

use common::checks::*;
use common::raw::*;
use common::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every timeout at 1 s.
fn timeouts() -> Opts {
    Opts::default()
        .limits("header_read_timeout = \"1s\"\nbody_timeout = \"1s\"\nsend_timeout = \"1s\"\n")
}

/// Time until the server closes `s` (reading and discarding), capped at `cap`.
async fn time_to_close(s: &mut tokio::net::tcp::OwnedReadHalf, cap: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    let r = tokio::time::timeout(cap, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    r.ok().map(|_| t.elapsed())
}

/// On a fresh gateway with [`timeouts`]: connect, send `first` (perhaps nothing), then stay
/// silent with the connection open. The time until the server closes it, capped at 4 s.
async fn closed_after_sending(first: &[u8]) -> Option<Duration> {
    let gw = start_with(timeouts()).await;
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    if !first.is_empty() {
        wr.write_all(first).await.unwrap();
    }
    let closed = time_to_close(&mut rd, Duration::from_secs(4)).await;
    gw.stop().await;
    closed
}

#[tokio::test]
async fn slowloris_trickled_request_head_is_cut_off() {
    let gw = start_with(timeouts()).await;
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let _ = s.set_nodelay(true);
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n{}X-Slow: {}",
        auth_line(),
        "s".repeat(200)
    );
    let writer = tokio::spawn(async move {
        for b in head.bytes().take(40) {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let closed = time_to_close(&mut rd, Duration::from_secs(5)).await;
    writer.abort();
    eprintln!("slowloris: closed after {closed:?}");
    assert!(
        closed.is_some_and(|d| d <= Duration::from_millis(3000)),
        "slowloris connection not closed within 3 s (header_read_timeout = 1s): {closed:?}"
    );
    assert_eq!(gw.nim.requests.load(Ordering::Relaxed), 0);
    others_are_served(&gw, "after slowloris").await;
    gw.stop().await;
}

#[tokio::test]
async fn silent_connection_is_closed_after_header_read_timeout() {
    // Connect and send nothing at all.
    let closed = closed_after_sending(b"").await;
    assert!(
        closed.is_some_and(|d| d <= Duration::from_millis(3000)),
        "a connection that never sends a byte is still open after 4 s (header_read_timeout = 1s): {closed:?}"
    );
}

#[tokio::test]
async fn partial_h2_preface_is_closed_after_header_read_timeout() {
    // A prefix of the HTTP/2 preface, then silence.
    let closed = closed_after_sending(b"PRI * HTTP/2.0\r\n").await;
    assert!(
        closed.is_some_and(|d| d <= Duration::from_millis(3000)),
        "a connection stuck inside the HTTP/2 preface is still open after 4 s (header_read_timeout = 1s): {closed:?}"
    );
}

#[tokio::test]
async fn slow_request_bodies_get_408() {
    let gw = start_with(timeouts()).await;
    let addr = gw.addr;
    // Content-Length 1000, only 10 bytes sent.
    let short = tokio::spawn(async move {
        let mut c = H1::connect(addr).await;
        let t = Instant::now();
        c.send(
            format!(
                "POST /v1/chat/completions?slow=cl HTTP/1.1\r\nHost: gw\r\n{}Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":",
                auth_line()
            )
            .as_bytes(),
        )
        .await;
        let r = c.response(Duration::from_secs(4)).await;
        let closed = r.is_some() || c.closed_within(Duration::from_millis(100)).await;
        (r, closed, t.elapsed())
    });
    // Chunked, one byte every 200 ms for 5 s.
    let trickle = tokio::spawn(async move {
        let mut c = H1::connect(addr).await;
        let t = Instant::now();
        c.send(
            format!(
                "POST /v1/chat/completions?slow=te HTTP/1.1\r\nHost: gw\r\n{}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                auth_line()
            )
            .as_bytes(),
        )
        .await;
        for _ in 0..25 {
            if !c.send(b"1\r\n \r\n").await {
                break;
            }
            if let Some(r) = c.response(Duration::from_millis(200)).await {
                return (Some(r), t.elapsed());
            }
            if c.eof {
                break;
            }
        }
        (c.try_parse(), t.elapsed())
    });
    let (r, closed, took) = short.await.unwrap();
    eprintln!(
        "slow body (CL 1000, 10 sent): {:?} after {took:?}",
        r.as_ref().map(|r| r.status)
    );
    assert!(
        r.as_ref().is_some_and(|r| r.status == 408) || (r.is_none() && closed),
        "short body: {:?} after {took:?}",
        r.as_ref().map(|r| r.status)
    );
    if let Some(r) = &r {
        assert_eq!(r.error_code(), "request_timeout");
    }
    assert!(took < Duration::from_secs(3), "short body took {took:?}");
    let (r, took) = trickle.await.unwrap();
    eprintln!(
        "slow body (chunked trickle): {:?} after {took:?}",
        r.as_ref().map(|r| r.status)
    );
    assert_eq!(
        r.as_ref().map(|r| r.status),
        Some(408),
        "trickled chunked body after {took:?}"
    );
    assert!(took < Duration::from_secs(3), "trickled body took {took:?}");
    assert!(seen_with(&gw, "slow=").is_empty(), "NIM saw a slow request");
    gw.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_header_read_timeout() {
    let gw = start_with(timeouts()).await;
    let mut c = H1::connect(gw.addr).await;
    c.send(&h1_get("/v1/models?idle=1", "")).await;
    let r = c.response(Duration::from_secs(3)).await;
    assert_eq!(r.map(|r| r.status), Some(200));
    let t = Instant::now();
    let closed = c.closed_within(Duration::from_secs(4)).await;
    eprintln!("idle keep-alive: closed {closed} after {:?}", t.elapsed());
    assert!(
        closed && t.elapsed() <= Duration::from_millis(2500),
        "idle keep-alive connection still open {:?} after its response (closed: {closed})",
        t.elapsed()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_a_stream_is_disconnected() {
    let gw = start_with(timeouts().sse_delay(Duration::ZERO)).await;
    gw.nim.sse_events.store(100_000, Ordering::Relaxed);
    let rss_before = rss_kb();
    // A small receive window so the gateway's writes stall quickly.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(gw.addr).await.unwrap();
    let body = chat_body(true);
    s.write_all(
        format!(
            "POST /v1/chat/completions?stall=1 HTTP/1.1\r\nHost: gw\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            auth_line(),
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let t = Instant::now();
    // Meanwhile other clients are served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    others_are_served(&gw, "while a client stalls").await;
    let mut cancelled = false;
    while t.elapsed() < Duration::from_secs(8) {
        if gw.nim.streams_cancelled.load(Ordering::Relaxed) >= 1 {
            cancelled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "stalled reader: upstream cancelled {cancelled} after {:?}",
        t.elapsed()
    );
    assert!(
        cancelled,
        "the upstream stream was not cancelled within 8 s of a client that never reads (send_timeout = 1s); completed: {}",
        gw.nim.streams_completed.load(Ordering::Relaxed)
    );
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "stalled client cut off only after {:?}",
        t.elapsed()
    );
    assert_eq!(gw.nim.streams_completed.load(Ordering::Relaxed), 0);
    // The client side sees the connection end (after whatever was buffered).
    let mut buf = vec![0u8; 65536];
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(drained, "the stalled connection was not closed");
    others_are_served(&gw, "after the stall").await;
    let grown_mb = rss_kb().saturating_sub(rss_before) / 1024;
    eprintln!("stalled reader: RSS grew {grown_mb} MB");
    assert!(grown_mb < 50, "RSS grew by {grown_mb} MB during the stall");
    gw.stop().await;
}
