//! A real `redis-server` (Debian package) on a loopback port for tests, started per test and
//! ended by its pid; `cli` runs `redis-cli` against it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` on a loopback port, ended by its pid.
pub struct Redis {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Start on a free port (a port taken between the probe and the start is retried).
    pub fn start() -> Self {
        for _ in 0..20 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if let Some(r) = Self::start_on(port) {
                return r;
            }
        }
        panic!("redis-server did not start");
    }

    pub fn start_on(port: u16) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        for _ in 0..100 {
            if cli(port, &["PING"]).as_deref() == Some("PONG") {
                return Some(Self {
                    child,
                    port,
                    _dir: dir,
                });
            }
            if child.try_wait().unwrap().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The `[ratelimit]` keys for a gateway sharing this Redis.
    pub fn table(&self) -> String {
        format!(
            "backend = \"redis\"\nredis_url = \"{}\"\ntimeout = \"500ms\"",
            self.url()
        )
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
