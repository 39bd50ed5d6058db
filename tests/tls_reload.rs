#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Certificates that change while nimgate runs (issue 17 points 5 and 6), all generated in the
//! test with the `openssl` CLI (`common::certs`) and swapped the way the kubelet updates a mounted
//! Secret (a new `..data` symlink renamed over the old one: no file the gateway opened changes):
//!
//! - the serving pair rotates under continuous traffic: new handshakes get the new serial while an
//!   open keep-alive connection and an open SSE stream carry on (the built binary);
//! - a mismatched, expired or not-yet-valid new pair is refused: the old serial is still served,
//!   the log line names why, `nimgate_tls_reloads_total` counts it (the built binary);
//! - `server.client_ca` rotation: a client certificate from the new CA is accepted;
//! - upstream mTLS: an in-test TLS upstream (the fake NIM behind tokio-rustls with a
//!   `WebPkiClientVerifier`) accepts nimgate's client certificate and refuses a client without
//!   one; the client certificate and the upstream `ca_file` rotate without a restart;
//! - `insecure_skip_verify` works only when explicit, logs a WARN, and is refused for http://;
//! - the pair checks themselves (`nimgate::tls::certified_key`), field by field.

mod common;

use bytes::Bytes;
use common::bin::{run_bin, spawn_serve, wait_ready, write_config};
use common::certs::{
    client_tls, roots, self_signed, signed, EXPIRED, NOT_YET_VALID, SERVER_EXT, VALID,
};
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A directory laid out as the kubelet mounts a Secret: `<dir>/<name> -> ..data/<name>`,
/// `..data -> ..<n>`. `swap` writes a new `..<n>` and renames a new `..data` link over the old one.
struct Mount {
    dir: PathBuf,
    n: u32,
}

impl Mount {
    fn new(dir: &Path, files: &[(&str, &Path)]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut m = Self {
            dir: dir.to_path_buf(),
            n: 0,
        };
        m.swap(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        m
    }

    fn swap(&mut self, files: &[(&str, &Path)]) {
        self.n += 1;
        let gen = format!("..{}", self.n);
        std::fs::create_dir(self.dir.join(&gen)).unwrap();
        for (name, src) in files {
            std::fs::copy(src, self.dir.join(&gen).join(name)).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&gen, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn serial(der: &[u8]) -> String {
    let der = rustls_pki_types::CertificateDer::from(der.to_vec());
    hex::encode(webpki::EndEntityCert::try_from(&der).unwrap().serial())
}

/// One HTTP/1.1 TLS connection to `addr` as `localhost`, trusting `ca`, presenting `client` if
/// given: its request sender and the serial of the certificate the server presented.
async fn connect(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<(SendRequest<Full<Bytes>>, String), String> {
    let mut cfg = client_tls(&[ca], client);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let presented = serial(&tls.get_ref().1.peer_certificates().unwrap()[0]);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok((send, presented))
}

fn chat_req(stream: bool, key: Option<&str>) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Full::new(Bytes::from(chat_body(stream)))).unwrap()
}

/// A chat completion on `send` with `key` (none: a client certificate is the credential): its
/// status, body read to the end.
async fn chat_with(send: &mut SendRequest<Full<Bytes>>, key: Option<&str>) -> Result<u16, String> {
    send.ready().await.map_err(|e| e.to_string())?;
    let r = send
        .send_request(chat_req(false, key))
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    r.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(status)
}

/// A new connection and one chat completion on it: (status, the serial the server presented).
async fn fresh_chat(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<(u16, String), String> {
    let (mut send, presented) = connect(addr, ca, client).await?;
    Ok((chat_with(&mut send, Some(CLIENT_KEY)).await?, presented))
}

/// Poll `$cond` (an expression that may `.await`) until true, at most 10 s: `bool`.
macro_rules! until {
    ($cond:expr) => {
        async {
            for _ in 0..200 {
                if $cond {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        }
        .await
    };
}

/// The value of one sample in the admin `/metrics`.
async fn metric(admin: std::net::SocketAddr, sample: &str) -> Option<u64> {
    let (_, text) = get_admin(admin, "/metrics").await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
}

/// The certificates of one serving rotation test: a CA `gw` and leaves signed by it.
struct ServingCerts {
    ca: PathBuf,
    leaf: Vec<(PathBuf, PathBuf)>,
}

fn serving_certs(d: &Path, leaves: &[(&str, (&str, &str))]) -> ServingCerts {
    let (ca, _, _) = self_signed(d, "gw");
    let leaf = leaves
        .iter()
        .map(|(serial, dates)| signed(d, "gw", &format!("srv{serial}"), SERVER_EXT, serial, *dates))
        .collect();
    ServingCerts { ca, leaf }
}

/// The built binary serving TLS from `mount`'s `tls.crt`/`tls.key`, polled every 100 ms.
fn serve_tls(d: &Path, nim: std::net::SocketAddr, mount: &Mount, extra: &str) -> common::bin::Proc {
    let cfg = write_config(d, "tls", nim, ("", ""), extra);
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "[server]\n",
        &format!(
            "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_reload_interval = \"100ms\"\n",
            mount.path("tls.crt"),
            mount.path("tls.key")
        ),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    spawn_serve(&cfg, None)
}

#[tokio::test]
async fn serving_cert_rotates_mid_traffic_and_open_connections_and_streams_continue() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = serving_certs(d, &[("1001", VALID), ("1002", VALID)]);
    let mut mount = Mount::new(
        &d.join("tls"),
        &[("tls.crt", &c.leaf[0].0), ("tls.key", &c.leaf[0].1)],
    );
    let (nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(20)).await;
    // A stream far longer than the test: it is still open whenever the rotation lands.
    nim.sse_events.store(100_000, Ordering::Relaxed);
    let mut p = serve_tls(d, nim_addr, &mount, "");
    wait_ready(p.admin).await;
    let gw = p.gw;

    // An HTTP/1 keep-alive connection and an SSE stream, both opened before the rotation.
    let (mut kept, kept_serial) = connect(gw, &c.ca, None).await.unwrap();
    assert_eq!(kept_serial, "1001");
    assert_eq!(chat_with(&mut kept, Some(CLIENT_KEY)).await, Ok(200));
    let (mut sse_conn, _) = connect(gw, &c.ca, None).await.unwrap();
    let resp = sse_conn
        .send_request(chat_req(true, Some(CLIENT_KEY)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut sse = resp.into_body();
    let frame = sse.frame().await.unwrap().unwrap();
    assert!(frame.data_ref().is_some_and(|b| b.starts_with(b"data: ")));

    // Continuous traffic on new connections across the rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let traffic = {
        let (stop, ok, failed, seen, ca) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            seen.clone(),
            c.ca.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match fresh_chat(gw, &ca, None).await {
                    Ok((200, s)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        seen.lock().unwrap().push(s);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    assert!(until!(ok.load(Ordering::Relaxed) >= 3));

    mount.swap(&[("tls.crt", &c.leaf[1].0), ("tls.key", &c.leaf[1].1)]);
    assert!(
        until!(seen.lock().unwrap().last().is_some_and(|s| s == "1002")),
        "no new handshake got the new certificate:\n{}",
        p.stderr.lock().unwrap()
    );
    // Once the new certificate is served, it is the only one new handshakes get.
    let after = seen.lock().unwrap().len();
    assert!(until!(seen.lock().unwrap().len() >= after + 3));
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let first_new = seen.iter().position(|s| s == "1002").unwrap();
    assert!(seen[..first_new].iter().all(|s| s == "1001"), "{seen:?}");
    assert!(seen[first_new..].iter().all(|s| s == "1002"), "{seen:?}");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed across the rotation"
    );

    // The connections opened before the rotation carry on, on their first certificate.
    assert_eq!(chat_with(&mut kept, Some(CLIENT_KEY)).await, Ok(200));
    for _ in 0..5 {
        let f = sse.frame().await.unwrap().unwrap();
        assert!(f.data_ref().is_some_and(|b| b.starts_with(b"data: ")));
    }
    drop(sse);

    let m = |o: &'static str| metric(p.admin, o);
    assert_eq!(
        m("nimgate_tls_reloads_total{what=\"server\",outcome=\"applied\"}").await,
        Some(1)
    );
    assert_eq!(
        m("nimgate_tls_reloads_total{what=\"server\",outcome=\"refused\"}").await,
        Some(0)
    );
    let log = p.stderr.lock().unwrap().clone();
    assert!(
        log.contains("TLS files reloaded") && log.contains("serial 1002"),
        "{log}"
    );
    let _ = common::bin::kill_pid(p.child.id(), "-TERM");
    let _ = p.finish();
}

#[tokio::test]
async fn a_mismatched_expired_or_not_yet_valid_pair_is_refused_and_the_old_one_served() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = serving_certs(
        d,
        &[
            ("1001", VALID),
            ("1002", VALID),
            ("1003", EXPIRED),
            ("1004", NOT_YET_VALID),
            ("1005", VALID),
        ],
    );
    let mut mount = Mount::new(
        &d.join("tls"),
        &[("tls.crt", &c.leaf[0].0), ("tls.key", &c.leaf[0].1)],
    );
    let (_nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::ZERO).await;
    let mut p = serve_tls(d, nim_addr, &mount, "");
    wait_ready(p.admin).await;
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n").unwrap();
    let cases: [(&Path, &Path, &str); 4] = [
        // leaf 1002's certificate with leaf 1001's key.
        (
            &c.leaf[1].0,
            &c.leaf[0].1,
            "server.tls_key: is not the key of the certificate in server.tls_cert",
        ),
        (
            &c.leaf[2].0,
            &c.leaf[2].1,
            "the certificate expired at 2020-01-02T00:00:00Z",
        ),
        (
            &c.leaf[3].0,
            &c.leaf[3].1,
            "the certificate is not valid yet (not before 2098-01-01T00:00:00Z)",
        ),
        (&garbage, &c.leaf[1].1, "not a valid PEM certificate file"),
    ];
    for (i, (cert, key, why)) in cases.into_iter().enumerate() {
        mount.swap(&[("tls.crt", cert), ("tls.key", key)]);
        let logged = until!({
            let log = p.stderr.lock().unwrap();
            log.matches("TLS reload refused").count() == i + 1
                && log.contains(why.split(": ").last().unwrap())
        });
        assert!(
            logged,
            "no refusal naming {why:?}:\n{}",
            p.stderr.lock().unwrap()
        );
        let (status, served) = fresh_chat(p.gw, &c.ca, None).await.unwrap();
        assert_eq!((status, served.as_str()), (200, "1001"), "after {why:?}");
        // `nimgate check` applies the same checks to the files as they are now.
        let out = run_bin(&["check", "--config"], &[d.join("tls.toml").as_path()]);
        let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{said}");
        assert!(said.contains(why), "{said}");
    }
    let log = p.stderr.lock().unwrap().clone();
    assert!(log.contains("field=server.tls_key"), "{log}");
    assert!(log.contains("field=server.tls_cert"), "{log}");
    // Never a line of a key file in the log.
    for (_, key) in &c.leaf {
        let pem = std::fs::read_to_string(key).unwrap();
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!log.contains(line), "key material in the log");
        }
    }
    let m = |o: &'static str| metric(p.admin, o);
    assert_eq!(
        m("nimgate_tls_reloads_total{what=\"server\",outcome=\"refused\"}").await,
        Some(4)
    );
    assert_eq!(
        m("nimgate_tls_reloads_total{what=\"server\",outcome=\"applied\"}").await,
        Some(0)
    );
    // A good pair after the bad ones is taken.
    mount.swap(&[("tls.crt", &c.leaf[4].0), ("tls.key", &c.leaf[4].1)]);
    assert!(until!({
        fresh_chat(p.gw, &c.ca, None)
            .await
            .is_ok_and(|(_, s)| s == "1005")
    }));
    assert_eq!(
        m("nimgate_tls_reloads_total{what=\"server\",outcome=\"applied\"}").await,
        Some(1)
    );
    let _ = common::bin::kill_pid(p.child.id(), "-TERM");
    let _ = p.finish();
}

#[tokio::test]
async fn client_ca_rotation_accepts_certificates_from_the_new_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, server_cert, server_key) = self_signed(d, "gw");
    let (old_ca, _, _) = self_signed(d, "old");
    let (new_ca, _, _) = self_signed(d, "new");
    let ext = "subjectAltName=URI:spiffe://t/app\nextendedKeyUsage=clientAuth";
    let old = signed(d, "old", "old-app", ext, "3001", VALID);
    let new = signed(d, "new", "new-app", ext, "3002", VALID);
    let mut mount = Mount::new(&d.join("ca"), &[("ca.crt", &old_ca)]);
    let mut o = Opts::default().server(format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"required\"\ntls_reload_interval = \"100ms\"",
        server_cert.display(),
        server_key.display(),
        mount.path("ca.crt")
    ));
    o.extra = "[[clients]]\nid = \"app\"\ncert_san_uri = \"spiffe://t/app\"\n".into();
    let gw = start_with(o).await;
    let call = |cert: &(PathBuf, PathBuf)| {
        let (c, k) = cert.clone();
        let ca = ca.clone();
        let addr = gw.addr;
        async move {
            let (mut send, _) = connect(addr, &ca, Some((&c, &k))).await?;
            send.ready().await.map_err(|e| e.to_string())?;
            let r = send
                .send_request(chat_req(false, None))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<u16, String>(r.status().as_u16())
        }
    };
    assert_eq!(call(&old).await, Ok(200));
    assert!(
        call(&new).await.is_err(),
        "a certificate from a CA not yet trusted"
    );
    // An open connection made with the old CA's certificate.
    let (mut kept, _) = connect(gw.addr, &ca, Some((&old.0, &old.1))).await.unwrap();
    assert_eq!(chat_with(&mut kept, None).await, Ok(200));

    mount.swap(&[("ca.crt", &new_ca)]);
    assert!(until!(call(&new).await == Ok(200)));
    assert!(call(&old).await.is_err(), "the old CA is no longer trusted");
    assert_eq!(
        chat_with(&mut kept, None).await,
        Ok(200),
        "open connections carry on"
    );
    let mtls = gw
        .audit_events("use")
        .await
        .into_iter()
        .filter(|r| r["auth"] == "mtls" && r["client_id"] == "app")
        .count();
    assert!(mtls >= 3, "{mtls}");
    assert_eq!(
        metric(
            gw.admin,
            "nimgate_tls_reloads_total{what=\"server\",outcome=\"applied\"}"
        )
        .await,
        Some(1)
    );
    gw.stop().await;
}

/// A fake NIM behind TLS; with `client_ca`, it requires a client certificate from that CA. It
/// records the serial of each accepted client certificate and the SNI of each handshake, and
/// counts refused handshakes. `config` may be replaced (its next connections use the new one).
struct TlsNim {
    addr: std::net::SocketAddr,
    nim: Arc<nimgate::fakenim::FakeNim>,
    serials: Arc<Mutex<Vec<String>>>,
    sni: Arc<Mutex<Vec<Option<String>>>>,
    refused: Arc<AtomicU64>,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
}

fn nim_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    let b = rustls::ServerConfig::builder_with_provider(nimgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(ca) => b.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(&[ca])),
                nimgate::tls::provider(),
            )
            .build()
            .unwrap(),
        ),
        None => b.with_no_client_auth(),
    };
    let mut c = b
        .with_single_cert(
            nimgate::tls::load_certs(cert).unwrap(),
            rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap(),
        )
        .unwrap();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

async fn tls_nim(cert: &Path, key: &Path, client_ca: Option<&Path>) -> TlsNim {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let n = TlsNim {
        addr: l.local_addr().unwrap(),
        nim: nimgate::fakenim::FakeNim::new(vec![NIM_KEY.into()], Duration::ZERO, true),
        serials: Arc::default(),
        sni: Arc::default(),
        refused: Arc::default(),
        config: Arc::new(Mutex::new(nim_config(cert, key, client_ca))),
    };
    let (nim, serials, sni, refused, config) = (
        n.nim.clone(),
        n.serials.clone(),
        n.sni.clone(),
        n.refused.clone(),
        n.config.clone(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config.lock().unwrap().clone());
            let (nim, serials, sni, refused) =
                (nim.clone(), serials.clone(), sni.clone(), refused.clone());
            tokio::spawn(async move {
                match acceptor.accept(s).await {
                    Ok(tls) => {
                        let conn = tls.get_ref().1;
                        sni.lock()
                            .unwrap()
                            .push(conn.server_name().map(String::from));
                        if let Some(c) = conn.peer_certificates().and_then(|c| c.first()) {
                            serials.lock().unwrap().push(serial(c));
                        }
                        nim.serve_conn(tls).await;
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    n
}

/// A gateway (in process) to `nim` at https://localhost, with `upstream` keys added.
async fn gateway_to(nim: &TlsNim, upstream: String) -> Gateway {
    start_with(
        Opts::default()
            .upstream_url(format!("https://localhost:{}", nim.addr.port()))
            .upstream(upstream)
            .server("tls_reload_interval = \"100ms\""),
    )
    .await
}

#[tokio::test]
async fn an_upstream_requiring_client_certificates_accepts_nimgates_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (nim_ca, nim_cert, nim_key) = self_signed(d, "nim");
    let (clients_ca, _, _) = self_signed(d, "clients");
    let (cert, key) = signed(
        d,
        "clients",
        "gateway",
        "extendedKeyUsage=clientAuth",
        "2001",
        VALID,
    );
    let nim = tls_nim(&nim_cert, &nim_key, Some(&clients_ca)).await;
    let gw = gateway_to(
        &nim,
        format!(
            "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
            nim_ca.display(),
            cert.display(),
            key.display()
        ),
    )
    .await;
    let (s, v) = gw.chat().await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(*nim.serials.lock().unwrap(), ["2001"]);
    assert_eq!(
        nim.sni.lock().unwrap()[0].as_deref(),
        Some("localhost"),
        "SNI is the URL's host"
    );
    assert_eq!(
        nim.nim.seen()[0].headers["authorization"],
        format!("Bearer {NIM_KEY}").as_str()
    );
    gw.stop().await;

    // A client without a certificate is refused by the upstream.
    let refused = nim.refused.load(Ordering::Relaxed);
    assert!(fresh_chat(nim.addr, &nim_ca, None).await.is_err());
    assert!(until!(nim.refused.load(Ordering::Relaxed) > refused));

    // So is a gateway with no client_cert: 502, and no request reached the upstream's HTTP layer.
    let before = nim.nim.requests.load(Ordering::Relaxed);
    let bare = gateway_to(&nim, format!("ca_file = \"{}\"", nim_ca.display())).await;
    let (s, v) = bare.chat().await;
    assert_eq!(s, 502, "{v}");
    assert_eq!(error_code(&v), "upstream_unreachable");
    assert_eq!(nim.nim.requests.load(Ordering::Relaxed), before);
    bare.stop().await;
}

#[tokio::test]
async fn the_upstream_client_certificate_and_ca_file_rotate_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (nim_ca, nim_cert, nim_key) = self_signed(d, "nim");
    let (nim2_ca, nim2_cert, nim2_key) = self_signed(d, "nim2");
    let (clients_ca, _, _) = self_signed(d, "clients");
    let usage = "extendedKeyUsage=clientAuth";
    let first = signed(d, "clients", "gw1", usage, "2001", VALID);
    let second = signed(d, "clients", "gw2", usage, "2002", VALID);
    let expired = signed(d, "clients", "gw3", usage, "2003", EXPIRED);
    let mut certs = Mount::new(
        &d.join("client"),
        &[("tls.crt", &first.0), ("tls.key", &first.1)],
    );
    let mut ca = Mount::new(&d.join("ca"), &[("ca.crt", &nim_ca)]);
    let nim = tls_nim(&nim_cert, &nim_key, Some(&clients_ca)).await;
    // No idle connections: every request makes a handshake, so each shows the current certificate
    // (pooled connections keep the session they made, as client connections to the gateway do).
    let gw = gateway_to(
        &nim,
        format!(
            "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\npool_max_idle = 0",
            ca.path("ca.crt"),
            certs.path("tls.crt"),
            certs.path("tls.key")
        ),
    )
    .await;
    let last = || nim.serials.lock().unwrap().last().cloned();
    assert_eq!(gw.chat().await.0, 200);
    assert_eq!(last().as_deref(), Some("2001"));

    certs.swap(&[("tls.crt", &second.0), ("tls.key", &second.1)]);
    assert!(
        until!(gw.chat().await.0 == 200 && last().as_deref() == Some("2002")),
        "the upstream never saw the new client certificate: {:?}",
        nim.serials.lock().unwrap()
    );
    // An expired one is refused: the upstream keeps seeing 2002.
    certs.swap(&[("tls.crt", &expired.0), ("tls.key", &expired.1)]);
    let refused = "nimgate_tls_reloads_total{what=\"upstream:default\",outcome=\"refused\"}";
    assert!(until!(metric(gw.admin, refused).await == Some(1)));
    assert_eq!(gw.chat().await.0, 200);
    assert_eq!(last().as_deref(), Some("2002"));
    // The files are one set: with the good pair back (the set now equals the one in use, so
    // nothing is reloaded), the CA change below is taken.
    certs.swap(&[("tls.crt", &second.0), ("tls.key", &second.1)]);

    // The upstream moves to a certificate from another CA: untrusted (502) until ca_file has it.
    *nim.config.lock().unwrap() = nim_config(&nim2_cert, &nim2_key, Some(&clients_ca));
    assert_eq!(gw.chat().await.0, 502);
    ca.swap(&[("ca.crt", &nim2_ca)]);
    assert!(until!(gw.chat().await.0 == 200));
    let applied = "nimgate_tls_reloads_total{what=\"upstream:default\",outcome=\"applied\"}";
    assert_eq!(metric(gw.admin, applied).await, Some(2));
    gw.stop().await;
}

#[tokio::test]
async fn insecure_skip_verify_is_explicit_loud_and_refused_for_http() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An upstream whose CA the gateway is not told about.
    let (_, cert, key) = self_signed(d, "stranger");
    let nim = tls_nim(&cert, &key, None).await;
    let cfg = write_config(d, "insecure", nim.addr, ("", ""), "");
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        &format!("url = \"http://{}\"", nim.addr),
        &format!(
            "url = \"https://localhost:{}\"\ninsecure_skip_verify = true",
            nim.addr.port()
        ),
        1,
    );
    std::fs::write(&cfg, &text).unwrap();
    let mut p = spawn_serve(&cfg, None);
    wait_ready(p.admin).await;
    let (s, v) = send_json(post(
        &format!("http://{}/v1/chat/completions", p.gw),
        Some(CLIENT_KEY),
        &chat_body(false),
    ))
    .await;
    assert_eq!(s, 200, "{v}");
    let log = p.stderr.lock().unwrap().clone();
    assert!(
        log.contains("WARN") && log.contains("NOT verified (insecure_skip_verify = true)"),
        "{log}"
    );
    let _ = common::bin::kill_pid(p.child.id(), "-TERM");
    let _ = p.finish();

    // On an http:// URL the setting means nothing: `check` refuses it, naming the field.
    let plain = text.replacen(
        &format!("url = \"https://localhost:{}\"", nim.addr.port()),
        &format!("url = \"http://{}\"", nim.addr),
        1,
    );
    std::fs::write(&cfg, plain).unwrap();
    let out = run_bin(&["check", "--config"], &[cfg.as_path()]);
    assert_eq!(out.status.code(), Some(64));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("upstream.insecure_skip_verify") && all.contains("meaningless for http://"),
        "{all}"
    );
}

#[test]
fn pair_checks_name_the_field_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _ = self_signed(d, "ca");
    let good = signed(d, "ca", "good", SERVER_EXT, "0abc", VALID);
    let other = signed(d, "ca", "other", SERVER_EXT, "0abd", VALID);
    let expired = signed(d, "ca", "old", SERVER_EXT, "0abe", EXPIRED);
    let early = signed(d, "ca", "early", SERVER_EXT, "0abf", NOT_YET_VALID);
    let read = |p: &Path| std::fs::read(p).unwrap();
    let fields = ("x.client_cert", "x.client_key");
    let now = std::time::SystemTime::now();
    let check = |cert: &[u8], key: &[u8]| {
        nimgate::tls::certified_key(cert, key, fields, now).map(|(_, leaf)| leaf)
    };
    let leaf = check(&read(&good.0), &read(&good.1)).unwrap();
    assert_eq!(leaf.serial, "0abc");
    assert_eq!(
        humantime::format_rfc3339_seconds(leaf.not_after).to_string(),
        "2099-12-31T00:00:00Z"
    );
    let err = |cert: &[u8], key: &[u8]| {
        let e = check(cert, key).unwrap_err();
        (e.field, e.message)
    };
    let (f, m) = err(&read(&good.0), &read(&other.1));
    assert_eq!(f, "x.client_key");
    assert_eq!(m, "is not the key of the certificate in x.client_cert");
    let (f, m) = err(&read(&expired.0), &read(&expired.1));
    assert_eq!(f, "x.client_cert");
    assert_eq!(m, "the certificate expired at 2020-01-02T00:00:00Z");
    let (f, m) = err(&read(&early.0), &read(&early.1));
    assert_eq!(f, "x.client_cert");
    assert_eq!(
        m,
        "the certificate is not valid yet (not before 2098-01-01T00:00:00Z)"
    );
    // The same pair is fine at a time inside its period.
    let later = humantime::parse_rfc3339("2098-06-01T00:00:00Z").unwrap();
    assert!(nimgate::tls::certified_key(&read(&early.0), &read(&early.1), fields, later).is_ok());
    assert_eq!(
        err(b"", &read(&good.1)),
        ("x.client_cert".into(), "no certificates found".into())
    );
    assert_eq!(
        err(&read(&good.0), &read(&good.0)),
        ("x.client_key".into(), "no PEM private key found".into())
    );
    // A damaged key: the message is fixed, nothing of the file in it.
    let key = String::from_utf8(read(&good.1)).unwrap();
    let broken = key.replacen("\n", "\n!!", 1);
    let (f, m) = err(&read(&good.0), broken.as_bytes());
    assert_eq!(f, "x.client_key");
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!m.contains(line), "{m}");
    }
    // A key file given as the certificate: the certificate's field is named.
    let (f, m) = err(&read(&good.1), &read(&good.1));
    assert_eq!(
        (f.as_str(), m.as_str()),
        ("x.client_cert", "no certificates found")
    );
}
