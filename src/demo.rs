//! `nimgate demo`: the gateway, a built-in fake NIM and a temporary in-memory key file in one
//! process, with a ready-to-paste curl line. The NIM key is random and never printed.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;

use crate::error::InitError;
use crate::fakenim::FakeNim;

#[expect(
    clippy::print_stdout,
    reason = "the demo's instructions are its output"
)]
pub async fn run(listen: SocketAddr, admin_listen: SocketAddr) -> Result<(), InitError> {
    let soft = |e: &dyn std::fmt::Display| InitError::Software(e.to_string());
    let new_key = || crate::auth::new_client_key().map_err(|e| soft(&e));
    let nim_key = format!("nvapi-demo-{}", &new_key()?[4..]);
    let nim_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| soft(&e))?;
    let nim_addr = nim_listener.local_addr().map_err(|e| soft(&e))?;
    let nim = FakeNim::new(vec![nim_key.clone()], Duration::from_millis(150), false);
    tokio::spawn(nim.serve(nim_listener));

    // In memory where possible, as a Vault Agent's emptyDir(medium: Memory) would be.
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("nimgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| soft(&format!("{}: {e}", dir.display())))?;
    let key_file = dir.join("nim-api-key");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_file)
        .and_then(|mut f| f.write_all(format!("{nim_key}\n").as_bytes()))
        .map_err(|e| soft(&format!("{}: {e}", key_file.display())))?;
    drop(nim_key);
    let audit_path =
        std::env::temp_dir().join(format!("nimgate-demo-{}-audit.jsonl", std::process::id()));

    let client_key = new_key()?;
    let toml = format!(
        r#"
[server]
listen = "{listen}"
[admin]
listen = "{admin_listen}"
[upstream]
url = "http://{nim_addr}"
[secret]
source = "file"
path = "{key}"
[[clients]]
id = "demo"
key_sha256 = "{digest}"
[audit]
path = "{audit}"
"#,
        key = key_file.display(),
        digest = crate::auth::key_digest_hex(&client_key),
        audit = audit_path.display(),
    );
    let cfg = crate::config::parse(&toml).map_err(|e| soft(&format!("{e:?}")))?;
    let bind = crate::server::bind;
    let listener = bind("--listen", listen).await?;
    let admin = bind("--admin-listen", admin_listen).await?;
    let gw = listener.local_addr().map_err(|e| soft(&e))?;
    let adm = admin.local_addr().map_err(|e| soft(&e))?;
    println!(
        r#"nimgate demo is running.
  gateway   http://{gw}   (readiness: http://{adm}/readyz, metrics: http://{adm}/metrics)
  fake NIM  http://{nim_addr}   (its key exists only in {kf} and in nimgate's memory)
  audit     {audit}   (check it: nimgate audit verify {audit})
  client key (demo only): {client_key}

Try:
  curl -s http://{gw}/v1/chat/completions -H "Authorization: Bearer {client_key}" -H "Content-Type: application/json" -d '{{"model":"meta/llama-3.1-8b-instruct","messages":[{{"role":"user","content":"Hello"}}]}}'
Streaming (SSE):
  curl -sN http://{gw}/v1/chat/completions -H "Authorization: Bearer {client_key}" -H "Content-Type: application/json" -d '{{"model":"meta/llama-3.1-8b-instruct","stream":true,"stream_options":{{"include_usage":true}},"messages":[{{"role":"user","content":"Hello"}}]}}'
Press Ctrl-C to stop."#,
        kf = key_file.display(),
        audit = audit_path.display(),
    );
    let r = crate::server::run(cfg, listener, admin, crate::server::shutdown_signal()).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}
