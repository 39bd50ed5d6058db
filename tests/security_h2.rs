#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Security suite, section 8: HTTP/2 abuse.
//!
//! Part of the hostile-input security suite (DESIGN.md "Security invariants" 1–5 and 8), split
//! by section into tests/security_*.rs. Every case sends its attack over a real loopback socket —
//! raw HTTP/1.1 bytes or hand-written HTTP/2 frames — and asserts the safe outcome: the status the
//! client gets, whether the connection is closed, and exactly what the fake NIM (and, for
//! routing, a canary listener) received. Shared raw-socket and h2 helpers live in tests/common/.

mod common;

use common::checks::*;
use common::h2frames as h2;
use common::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_gets_goaway_and_others_are_served() {
    let gw = start().await;
    let rss_before = rss_kb();
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let _ = s.set_nodelay(true);
    let (mut rd, mut wr) = s.into_split();
    // Read concurrently so a GOAWAY is consumed before any reset of the socket.
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut tmp = vec![0u8; 65536];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut frames = 0usize;
        loop {
            while let Some(f) = h2::parse(&mut buf) {
                frames += 1;
                if f.ty == h2::GOAWAY {
                    return (Some(f.goaway()), frames, false);
                }
            }
            match tokio::time::timeout_at(deadline, rd.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (None, frames, true),
                Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
                Err(_) => return (None, frames, false),
            }
        }
    });
    let authority = gw.addr.to_string();
    let bearer = format!("Bearer {CLIENT_KEY}");
    let hdrs = [
        ("authorization", bearer.as_str()),
        ("x-fake-delay-ms", "1500"),
    ];
    let mut sent = 0u32;
    let _ = wr
        .write_all(&[h2::PREFACE, &h2::settings(&[])].concat())
        .await;
    'attack: for batch in 0..20u32 {
        let mut out = Vec::new();
        for k in 0..50u32 {
            let id = 2 * (batch * 50 + k) + 1;
            out.extend(h2::get(
                id,
                &format!("/v1/models?rr={id}"),
                &authority,
                &hdrs,
            ));
            out.extend(h2::rst(id, h2::CANCEL));
        }
        if wr.write_all(&out).await.is_err() {
            break 'attack;
        }
        sent += 50;
        tokio::task::yield_now().await;
    }
    let (goaway, frames, eof) = reader.await.unwrap();
    eprintln!(
        "rapid reset: {sent} streams opened+reset, GOAWAY {goaway:?}, {frames} frames, eof {eof}, NIM requests {}",
        gw.nim.requests.load(Ordering::Relaxed)
    );
    others_are_served(&gw, "after rapid reset").await;
    let (last, code) = goaway.expect("the attacking connection got no GOAWAY");
    assert_eq!(code, 0xb, "GOAWAY should say ENHANCE_YOUR_CALM");
    assert!(
        last < 2 * 1000 - 1,
        "the server processed every one of the 1000 reset streams (last id {last})"
    );
    let grown_mb = rss_kb().saturating_sub(rss_before) / 1024;
    assert!(grown_mb < 50, "RSS grew by {grown_mb} MB");
    gw.stop().await;
}

#[tokio::test]
async fn h2_streams_beyond_max_h2_streams_never_reach_the_nim_concurrently() {
    let gw = start_with(Opts::default().limits("max_h2_streams = 4")).await;
    let mut c = h2::Conn::open(gw.addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut advertised = None;
    while let Some(f) = c.next(deadline).await {
        if f.ty == h2::SETTINGS && f.flags & h2::ACK == 0 {
            for p in f.payload.chunks(6) {
                if u16::from_be_bytes([p[0], p[1]]) == h2::SETTINGS_MAX_CONCURRENT_STREAMS {
                    advertised = Some(u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
                }
            }
            break;
        }
    }
    assert_eq!(advertised, Some(4), "SETTINGS_MAX_CONCURRENT_STREAMS");
    let authority = gw.addr.to_string();
    let bearer = format!("Bearer {CLIENT_KEY}");
    let hdrs = [
        ("authorization", bearer.as_str()),
        ("x-fake-delay-ms", "800"),
    ];
    let mut out = Vec::new();
    for k in 0..10u32 {
        let id = 2 * k + 1;
        out.extend(h2::get(
            id,
            &format!("/v1/models?h2c={id}"),
            &authority,
            &hdrs,
        ));
    }
    assert!(c.send(&out).await);
    // Watch the NIM while every admitted request is still sleeping there.
    let t = Instant::now();
    let mut peak = 0;
    while t.elapsed() < Duration::from_millis(650) {
        peak = peak.max(gw.nim.requests.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut ok = 0;
    let mut refused = 0;
    let mut other = Vec::new();
    let mut goaway = None;
    while ok + refused + other.len() < 10 {
        let Some(f) = c.next(deadline).await else {
            break;
        };
        match f.ty {
            h2::HEADERS => match h2::status(&f.payload) {
                Some(200) => ok += 1,
                st => other.push(format!("stream {} status {st:?}", f.stream)),
            },
            h2::RST_STREAM if f.rst_code() == h2::REFUSED_STREAM => refused += 1,
            h2::RST_STREAM => other.push(format!("stream {} reset {}", f.stream, f.rst_code())),
            h2::GOAWAY => {
                goaway = Some(f.goaway());
                break;
            }
            _ => {}
        }
    }
    eprintln!("max_h2_streams=4: peak {peak}, 200s {ok}, refused {refused}, other {other:?}, goaway {goaway:?}");
    assert!(
        peak <= 4,
        "{peak} requests in flight at the NIM from one connection with max_h2_streams = 4"
    );
    assert!((1..=10).contains(&ok), "some streams must be served: {ok}");
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(ok + refused, 10, "every stream answered or refused");
    assert!(gw.nim.requests.load(Ordering::Relaxed) <= 10);
    gw.stop().await;
}

#[tokio::test]
async fn h2_oversized_header_list_is_refused_and_others_are_unaffected() {
    let gw = start().await;
    let mut c = h2::Conn::open(gw.addr).await;
    let authority = gw.addr.to_string();
    let bearer = format!("Bearer {CLIENT_KEY}");
    // ~48 KiB of headers (max_header_bytes = 32768), split over HEADERS + CONTINUATION.
    let mut block = h2::request_block(
        "GET",
        "/v1/models?huge=1",
        &authority,
        &[("authorization", bearer.as_str())],
    );
    for n in 0..6 {
        h2::literal(&mut block, &format!("x-pad-{n}"), &[b'p'; 8000]);
    }
    let mut out = Vec::new();
    let pieces: Vec<&[u8]> = block.chunks(16_000).collect();
    for (i, p) in pieces.iter().enumerate() {
        let ty = if i == 0 {
            h2::HEADERS
        } else {
            h2::CONTINUATION
        };
        let mut flags = if i == 0 { h2::END_STREAM } else { 0 };
        if i + 1 == pieces.len() {
            flags |= h2::END_HEADERS;
        }
        out.extend(h2::frame(ty, flags, 1, p));
    }
    // A normal stream right behind it on the same connection.
    out.extend(h2::get(
        3,
        "/v1/models?huge=0",
        &authority,
        &[("authorization", bearer.as_str())],
    ));
    let _ = c.send(&out).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut huge = None;
    let mut normal = None;
    let mut goaway = None;
    while huge.is_none() || normal.is_none() {
        let Some(f) = c.next(deadline).await else {
            break;
        };
        match (f.ty, f.stream) {
            (h2::HEADERS, 1) => huge = Some(format!("status {:?}", h2::status(&f.payload))),
            (h2::RST_STREAM, 1) => huge = Some(format!("reset {}", f.rst_code())),
            (h2::HEADERS, 3) => normal = h2::status(&f.payload),
            (h2::GOAWAY, _) => {
                goaway = Some(f.goaway());
                break;
            }
            _ => {}
        }
    }
    eprintln!("oversized h2 header list: huge stream {huge:?}, normal stream {normal:?}, goaway {goaway:?}, eof {}", c.eof);
    assert!(
        huge.is_some() || goaway.is_some() || c.eof,
        "the oversized stream got no answer at all"
    );
    assert_ne!(
        huge.as_deref(),
        Some("status Some(200)"),
        "oversized header list served"
    );
    assert!(
        seen_with(&gw, "huge=1").is_empty(),
        "the NIM saw the oversized request"
    );
    if goaway.is_none() && !c.eof {
        assert_eq!(normal, Some(200), "the connection survives a stream error");
    }
    others_are_served(&gw, "after an oversized header list").await;
    gw.stop().await;
}

/// Issue 12, finding 2: a client that sets `SETTINGS_INITIAL_WINDOW_SIZE = 0` and answers PINGs
/// never blocks the socket, so only the per-stream watchdog can take back the concurrency slots its
/// unread responses hold. After `send_timeout` they are released (the `done` records say
/// `client_stalled`), other clients are served again, and a stream the client later opens a window
/// for is reset instead of resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_zero_window_streams_release_their_slots_after_send_timeout() {
    let gw = start_with(
        Opts::default()
            .limits("max_concurrent_requests = 4\nclient_max_concurrent = 4\nsend_timeout = \"1s\"")
            .sse_delay(Duration::from_millis(200)),
    )
    .await;
    // Streams of 20 events 200 ms apart: still running at the NIM when the watchdog acts.
    gw.nim.sse_events.store(20, Ordering::Relaxed);
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let _ = s.set_nodelay(true);
    s.write_all(&[h2::PREFACE, &h2::settings(&[(INITIAL_WINDOW_SIZE, 0)])].concat())
        .await
        .unwrap();
    let mut c = h2::Conn {
        s,
        buf: Vec::new(),
        eof: false,
    };
    let authority = gw.addr.to_string();
    let bearer = format!("Bearer {CLIENT_KEY}");
    let body = chat_body(true);
    let len = body.len().to_string();
    let hdrs = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
    ];
    let mut out = Vec::new();
    for id in [1u32, 3, 5, 7] {
        let block = h2::request_block("POST", "/v1/chat/completions", &authority, &hdrs);
        out.extend(h2::frame(h2::HEADERS, h2::END_HEADERS, id, &block));
        out.extend(h2::frame(0, h2::END_STREAM, id, body.as_bytes()));
    }
    assert!(c.send(&out).await);
    // All four responses start (headers need no window) and then wait for window forever.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut heads = 0;
    while heads < 4 {
        let f = c.next(deadline).await.expect("four response heads");
        if f.ty == h2::HEADERS && h2::status(&f.payload) == Some(200) {
            heads += 1;
        }
    }
    let url = gw.url("/v1/models");
    let other = || async { send(get(&url, Some(CLIENT_KEY_B))).await.0 };
    assert_eq!(
        other().await,
        503,
        "the four stalled streams hold every slot"
    );
    // Keep answering PINGs (the connection stays healthy) while the watchdog works.
    let t = Instant::now();
    let mut status = 503;
    while t.elapsed() < Duration::from_secs(5) {
        let _ = c
            .next(tokio::time::Instant::now() + Duration::from_millis(200))
            .await;
        status = other().await;
        if status == 200 {
            break;
        }
    }
    eprintln!("slots back after {:?}", t.elapsed());
    assert_eq!(status, 200, "slots released after send_timeout");
    let mut stalled = 0;
    for _ in 0..30 {
        stalled = gw
            .audit_events("done")
            .await
            .iter()
            .filter(|d| d["client_id"] == "team-a" && d["reason"] == "client_stalled")
            .count();
        if stalled == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stalled, 4, "each stalled stream ends with a done record");
    assert!(
        eventually(|| gw.nim.streams_cancelled.load(Ordering::Relaxed) == 4).await,
        "the upstream streams are cancelled"
    );
    // Opening the window now gets a reset, not the rest of a response nobody is waiting for.
    let mut wu = Vec::new();
    for id in [0u32, 1] {
        wu.extend(h2::frame(8, 0, id, &65_535u32.to_be_bytes()));
    }
    assert!(c.send(&wu).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut reset = false;
    while let Some(f) = c.next(deadline).await {
        if f.ty == h2::RST_STREAM && f.stream == 1 {
            reset = true;
            break;
        }
        assert!(
            !(f.ty == 0 && f.stream == 1),
            "stream 1 resumed after its slot was taken back"
        );
    }
    assert!(reset, "stream 1 is reset");
    gw.stop().await;
}
