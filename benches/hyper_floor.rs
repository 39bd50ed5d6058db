#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! `hyper-floor`: the smallest reverse proxy the gateway's stack can make (hyper HTTP/1 server,
//! hyper-util pooled client, one header set; no auth, audit, limits or TLS). The load test runs
//! it beside nimgate to show what hyper + tokio alone cost on the machine. Not for production.
//!
//! `hyper-floor LISTEN UPSTREAM_URL`, e.g. `hyper-floor 127.0.0.1:18088 http://127.0.0.1:18000`.

use http::{HeaderValue, Uri};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

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
    let (Some(scheme), Some(authority)) = (base.scheme().cloned(), base.authority().cloned())
    else {
        eprintln!("hyper-floor: upstream URL needs scheme and host");
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
        let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build_http();
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (client, scheme, authority) = (client.clone(), scheme.clone(), authority.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    let client = client.clone();
                    let uri = Uri::builder()
                        .scheme(scheme.clone())
                        .authority(authority.clone())
                        .path_and_query(req.uri().path_and_query().map_or("/", |p| p.as_str()))
                        .build();
                    async move {
                        *req.uri_mut() = uri.map_err(std::io::Error::other)?;
                        req.headers_mut().insert(
                            http::header::AUTHORIZATION,
                            HeaderValue::from_static("Bearer floor"),
                        );
                        client.request(req).await.map_err(std::io::Error::other)
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
