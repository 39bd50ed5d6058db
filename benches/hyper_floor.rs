#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! `hyper-floor`: the smallest reverse proxy the gateway's stack can make (hyper HTTP/1 server,
//! a keep-alive pool of hyper HTTP/1 client connections like nimgate's, one header set; no auth,
//! audit, limits or TLS). The load test runs it beside nimgate to show what hyper + tokio alone
//! cost on the machine. Not for production.
//!
//! `hyper-floor LISTEN UPSTREAM_URL`, e.g. `hyper-floor 127.0.0.1:18088 http://127.0.0.1:18000`.

use http::{HeaderValue, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};

type Sender = client::SendRequest<Incoming>;

/// A ready pooled connection, or a new one.
async fn checkout(pool: &Mutex<Vec<Sender>>, addr: &str) -> std::io::Result<Sender> {
    loop {
        let Some(tx) = pool.lock().unwrap().pop() else {
            break;
        };
        if tx.is_ready() {
            return Ok(tx);
        }
    }
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let (tx, conn) = client::handshake(TokioIo::new(tcp))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(tx)
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1)) else {
        eprintln!("usage: hyper-floor LISTEN UPSTREAM_URL");
        return std::process::ExitCode::from(64);
    };
    let Ok(base) = upstream.parse::<Uri>() else {
        eprintln!("hyper-floor: bad upstream URL");
        return std::process::ExitCode::from(64);
    };
    let Some(authority) = base.authority().cloned() else {
        eprintln!("hyper-floor: upstream URL needs a host");
        return std::process::ExitCode::from(64);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hyper-floor: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let served = rt.block_on(async move {
        let pool: Arc<Mutex<Vec<Sender>>> = Arc::default();
        let addr: Arc<str> = authority.as_str().into();
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (pool, addr) = (pool.clone(), addr.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    let (pool, addr) = (pool.clone(), addr.clone());
                    async move {
                        req.headers_mut().insert(
                            http::header::AUTHORIZATION,
                            HeaderValue::from_static("Bearer floor"),
                        );
                        let mut tx = checkout(&pool, &addr).await?;
                        let resp = tx.send_request(req).await.map_err(std::io::Error::other)?;
                        pool.lock().unwrap().push(tx);
                        Ok::<_, std::io::Error>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyper-floor: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
