//! `fake-nim`: the project's fake NVIDIA NIM as a standalone server, for benchmarks and manual
//! tests. `--key-file` (re-read at start) holds the key it accepts; without it any key passes.
#![expect(clippy::print_stdout, reason = "prints its address for scripts")]

use std::time::Duration;

fn main() -> std::process::ExitCode {
    let mut listen = "127.0.0.1:8000".to_string();
    let mut key_file = None;
    let mut delay_ms = 20u64;
    let mut events = 5u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "--key-file" => key_file = args.next(),
            "--sse-delay-ms" => {
                delay_ms = args.next().and_then(|v| v.parse().ok()).unwrap_or(delay_ms);
            }
            "--sse-events" => events = args.next().and_then(|v| v.parse().ok()).unwrap_or(events),
            _ => {
                eprintln!("usage: fake-nim [--listen ADDR] [--key-file FILE] [--sse-delay-ms N] [--sse-events N]");
                return std::process::ExitCode::from(64);
            }
        }
    }
    let keys = match key_file {
        Some(p) => match std::fs::read_to_string(&p) {
            Ok(k) => vec![k.trim_end().to_string()],
            Err(e) => {
                eprintln!("fake-nim: --key-file {p}: {e}");
                return std::process::ExitCode::from(64);
            }
        },
        None => Vec::new(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fake-nim: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let l = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("fake-nim: bind {listen}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        println!(
            "fake-nim listening on {}",
            l.local_addr().map(|a| a.to_string()).unwrap_or(listen)
        );
        let nim = nimgate::fakenim::FakeNim::new(keys, Duration::from_millis(delay_ms), false);
        nim.sse_events
            .store(events, std::sync::atomic::Ordering::Relaxed);
        nim.serve(l).await;
        std::process::ExitCode::SUCCESS
    })
}
