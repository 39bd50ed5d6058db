//! The built `nimgate` binary as a child process: `serve` on the ports the config names (tests
//! pass 127.0.0.1:0) and read the bound addresses back from its "nimgate serving" log line, so no
//! port is ever picked by binding, closing and hoping it stays free. Stdout and stderr are
//! collected as they come (a full pipe would block the child). The child is ended by its pid.

use super::get_admin;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_nimgate");

pub struct Proc {
    pub child: Child,
    /// The client listener's bound address, from the log.
    pub gw: SocketAddr,
    /// The admin listener's bound address, from the log.
    pub admin: SocketAddr,
    pub stderr: Arc<Mutex<String>>,
    /// Everything the child wrote to stdout; complete once [`Proc::finish`] returned.
    pub stdout: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Child::kill signals this child's pid only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Wait for the child to exit, then for its output to be read to the end: (status, stdout,
    /// stderr).
    pub fn finish(&mut self) -> (ExitStatus, String, String) {
        let status = self.child.wait().unwrap();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let out = self.stdout.lock().unwrap().clone();
        let err = self.stderr.lock().unwrap().clone();
        (status, out, err)
    }
}

/// Run the binary to its end with `args`, then `paths`: its output.
pub fn run_bin(args: &[&str], paths: &[&Path]) -> Output {
    Command::new(BIN).args(args).args(paths).output().unwrap()
}

/// Send `sig` ("-TERM", "-KILL", …) to one process, by pid.
pub fn kill_pid(pid: u32, sig: &str) -> ExitStatus {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
}

fn field(line: &str, name: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}="))?.parse().ok())
}

/// Start `nimgate serve --config` (with `RUST_LOG` if given) and wait for its "serving" log
/// line, which names the addresses it bound.
pub fn spawn_serve(config: &Path, rust_log: Option<&str>) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match rust_log {
        Some(l) => cmd.env("RUST_LOG", l),
        // The config's `server.log_level` then decides, whatever the test's environment says.
        None => cmd.env_remove("RUST_LOG"),
    };
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let out = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let log2 = log.clone();
    let err_reader = std::thread::spawn(move || {
        // Bytes, not `lines()`: a line that is not UTF-8 must not end the collection.
        let mut r = BufReader::new(stderr);
        let mut raw = Vec::new();
        while r.read_until(b'\n', &mut raw).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&raw).into_owned();
            if line.contains("nimgate serving") {
                let _ = tx.send((field(&line, "listen"), field(&line, "admin")));
            }
            log2.lock().unwrap().push_str(&line);
            raw.clear();
        }
    });
    let out2 = out.clone();
    let out_reader = std::thread::spawn(move || {
        let mut raw = Vec::new();
        let _ = stdout.read_to_end(&mut raw);
        *out2.lock().unwrap() = String::from_utf8_lossy(&raw).into_owned();
    });
    let mut p = Proc {
        child,
        gw: "0.0.0.0:0".parse().unwrap(),
        admin: "0.0.0.0:0".parse().unwrap(),
        stderr: log,
        stdout: out,
        readers: vec![err_reader, out_reader],
    };
    // On a panic here `p` is dropped, which ends the child.
    let (gw, admin) = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no 'nimgate serving' line:\n{}", p.stderr.lock().unwrap()));
    p.gw = gw.expect("listen= in the serving line");
    p.admin = admin.expect("admin= in the serving line");
    p
}

/// Poll the admin `/readyz` until it answers 200 (max 5 s).
pub async fn wait_ready(admin: SocketAddr) {
    for _ in 0..250 {
        if get_admin(admin, "/readyz").await.map(|r| r.0) == Ok(200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("binary never became ready");
}

/// A config file `<name>.toml` in `dir` for `spawn_serve`: ports 0, the fake NIM at `nim`, a key
/// file, clients `team-a` (with the keys `a_extra`) and `team-b` (`b_extra`), an audit file
/// `<name>.audit.jsonl`, then `extra` (more tables).
pub fn write_config(
    dir: &Path,
    name: &str,
    nim: SocketAddr,
    (a_extra, b_extra): (&str, &str),
    extra: &str,
) -> std::path::PathBuf {
    use super::{CLIENT_KEY, CLIENT_KEY_B, NIM_KEY};
    use nimgate::auth::key_digest_hex;
    std::fs::write(dir.join("key"), format!("{NIM_KEY}\n")).unwrap();
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstream]
url = "http://{nim}"
[secret]
source = "file"
path = "{key}"
[[clients]]
id = "team-a"
key_sha256 = "{a}"
{a_extra}
[[clients]]
id = "team-b"
key_sha256 = "{b}"
{b_extra}
[audit]
path = "{audit}"
{extra}
"#,
            key = dir.join("key").display(),
            a = key_digest_hex(CLIENT_KEY),
            b = key_digest_hex(CLIENT_KEY_B),
            audit = dir.join(format!("{name}.audit.jsonl")).display(),
        ),
    )
    .unwrap();
    cfg
}
