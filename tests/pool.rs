#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! The upstream connection pool (`proxy::client::Pool`, issue 20's lean pool over hyper's
//! connection handshakes) against a real loopback upstream that counts its connections:
//! keep-alive reuse, `pool_max_idle`, `pool_idle_timeout`, `connect_timeout`, a pooled connection
//! the upstream closed, and HTTP/2 multiplexing on one connection.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nimgate::config::UpstreamConfig;
use nimgate::proxy::client::Pool;
use nimgate::proxy::request_body::RequestBody;
use nimgate::tls::UpstreamTls;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
    requests: AtomicUsize,
}

/// An upstream answering every request after `delay`; `h2` serves HTTP/2 prior knowledge.
async fn upstream(delay: Duration, h2: bool) -> (SocketAddr, Arc<Counts>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            c.accepted.fetch_add(1, Ordering::SeqCst);
            c.open.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let c2 = c.clone();
                let svc = hyper::service::service_fn(move |_req: hyper::Request<Incoming>| {
                    let c = c2.clone();
                    async move {
                        c.requests.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"ok",
                        ))))
                    }
                });
                let io = TokioIo::new(s);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
                c.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, counts)
}

fn pool(addr: SocketAddr, extra: &str) -> Pool {
    let cfg: UpstreamConfig = toml::from_str(&format!("url = \"http://{addr}\"\n{extra}")).unwrap();
    let tls = UpstreamTls::start("t", "upstream", &cfg, Duration::from_secs(60)).unwrap();
    Pool::new(&cfg, &format!("http://{addr}"), &tls).unwrap()
}

fn get(path: &'static str) -> hyper::Request<RequestBody> {
    let mut r = hyper::Request::new(RequestBody::Replay { data: None });
    *r.uri_mut() = http::Uri::from_static(path);
    r
}

async fn fetch(p: &Pool) -> Bytes {
    let resp = p.request(get("/x")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap().to_bytes()
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let (addr, c) = upstream(Duration::ZERO, false).await;
    let p = pool(addr, "");
    for _ in 0..50 {
        assert_eq!(&fetch(&p).await[..], b"ok");
    }
    assert_eq!(c.requests.load(Ordering::SeqCst), 50);
    assert_eq!(c.accepted.load(Ordering::SeqCst), 1, "keep-alive reuse");
    assert_eq!(p.idle_connections(), 1);
}

#[tokio::test]
async fn concurrency_opens_connections_and_max_idle_keeps_only_that_many() {
    let (addr, c) = upstream(Duration::from_millis(200), false).await;
    let p = Arc::new(pool(addr, "pool_max_idle = 2"));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let p = p.clone();
        set.spawn(async move { fetch(&p).await });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(&r.unwrap()[..], b"ok");
    }
    assert_eq!(
        c.accepted.load(Ordering::SeqCst),
        8,
        "8 at once: 8 connections"
    );
    // The 6 beyond pool_max_idle are closed once their responses are done.
    until("6 connections closed", || {
        c.open.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(p.idle_connections(), 2);
    for _ in 0..4 {
        fetch(&p).await;
    }
    assert_eq!(
        c.accepted.load(Ordering::SeqCst),
        8,
        "the idle two are reused"
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_pool_idle_timeout() {
    let (addr, c) = upstream(Duration::ZERO, false).await;
    let p = pool(addr, "pool_idle_timeout = \"300ms\"");
    fetch(&p).await;
    fetch(&p).await;
    assert_eq!(c.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(c.open.load(Ordering::SeqCst), 1);
    // No traffic: the reaper closes it (the upstream sees the close).
    until("idle connection closed", || {
        c.open.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(p.idle_connections(), 0);
    fetch(&p).await;
    assert_eq!(
        c.accepted.load(Ordering::SeqCst),
        2,
        "a new connection after the timeout"
    );
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_reused() {
    // Raw HTTP/1.1 upstream: answers one request with keep-alive, then closes the socket.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            a.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        }
    });
    let p = pool(addr, "");
    fetch(&p).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        &fetch(&p).await[..],
        b"ok",
        "the closed connection is skipped"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connect_timeout_ends_a_connect_that_hangs() {
    // A listener that never accepts, its backlog full: the next SYN gets no answer.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut filler = Vec::new();
    let p = pool(addr, "connect_timeout = \"300ms\"");
    let t = Instant::now();
    loop {
        // Fill the queue until a connect hangs.
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => filler.push(s),
            _ => break,
        }
        assert!(filler.len() < 64, "backlog never filled");
    }
    let t0 = Instant::now();
    let err = p.request(get("/x")).await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert!(
        matches!(err, nimgate::proxy::client::PoolError::ConnectTimeout),
        "{err:?}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(290));
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_refused_connect_is_a_connect_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let err = pool(addr, "").request(get("/x")).await.unwrap_err();
    assert!(err.is_connect(), "{err}");
}

#[tokio::test]
async fn http2_multiplexes_concurrent_requests_on_one_connection() {
    let (addr, c) = upstream(Duration::from_millis(100), true).await;
    let p = Arc::new(pool(addr, "http2 = true"));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let p = p.clone();
        set.spawn(async move { fetch(&p).await });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(&r.unwrap()[..], b"ok");
    }
    assert_eq!(c.requests.load(Ordering::SeqCst), 20);
    assert_eq!(
        c.accepted.load(Ordering::SeqCst),
        1,
        "one multiplexed connection"
    );
}
