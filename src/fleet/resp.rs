//! A minimal Redis client: RESP2 over TCP or TLS, a small pool of connections, every call bounded
//! by one timeout (connect, `AUTH`/`SELECT` on a new connection, write and read together).
//!
//! Kept instead of the `redis` crate: nimgate sends a handful of commands (`EVALSHA`, falling
//! back to `EVAL` on `NOSCRIPT`; `SET`, `SCAN`, `GET` for audit anchors) and needs a hard
//! per-call deadline and no reconnect loop of its own (`fleet::Shared` decides when to try
//! again); that is 200 lines with no dependency tree.
//! The password comes from a file and lives only in this struct (zeroized on drop); it is never
//! logged, and errors never quote a reply that could echo it.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

/// A reply. Only the shapes nimgate's scripts return are kept apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Simple(String),
    Array(Vec<Reply>),
    /// An error reply: its first word (`NOSCRIPT`, `WRONGPASS`, …), never the rest.
    Error(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Conn = BufReader<Box<dyn Io>>;

/// Where and how to connect.
pub struct Target {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    pub password: Option<Zeroizing<String>>,
}

pub struct Client {
    target: Target,
    timeout: Duration,
    idle: Mutex<Vec<Conn>>,
}

/// Idle connections kept for reuse; more are closed after their call.
const MAX_IDLE: usize = 32;
/// Largest bulk string or array accepted from the server (the scripts return a few integers).
const MAX_LEN: usize = 1 << 20;
/// Most items in one array reply (the scripts return 8; an anchor `SCAN` step ~100 keys).
const MAX_ITEMS: usize = 1024;

#[derive(Debug)]
pub enum CallError {
    Timeout,
    Io(std::io::Error),
    Protocol(&'static str),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out"),
            Self::Io(e) => write!(f, "{e}"),
            Self::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl From<std::io::Error> for CallError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl Client {
    pub fn new(target: Target, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            target,
            timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// One command, on a pooled connection, within the timeout. A connection that failed is
    /// dropped, never returned to the pool.
    pub async fn call(&self, args: &[&[u8]]) -> Result<Reply, CallError> {
        let pooled = self.idle.lock().ok().and_then(|mut v| v.pop());
        let fut = async {
            let mut conn = match pooled {
                Some(c) => c,
                None => self.connect().await?,
            };
            let reply = roundtrip(&mut conn, args).await?;
            Ok::<_, CallError>((conn, reply))
        };
        let (conn, reply) = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| CallError::Timeout)??;
        if let Ok(mut v) = self.idle.lock() {
            if v.len() < MAX_IDLE {
                v.push(conn);
            }
        }
        Ok(reply)
    }

    async fn connect(&self) -> Result<Conn, CallError> {
        let t = &self.target;
        let tcp = TcpStream::connect((t.host.as_str(), t.port)).await?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &t.tls {
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
            None => Box::new(tcp),
        };
        let mut conn = BufReader::new(io);
        if let Some(pw) = &t.password {
            match roundtrip(&mut conn, &[b"AUTH", pw.as_bytes()]).await? {
                Reply::Simple(_) => {}
                _ => return Err(CallError::Protocol("AUTH refused")),
            }
        }
        if t.db != 0 {
            let db = t.db.to_string();
            match roundtrip(&mut conn, &[b"SELECT", db.as_bytes()]).await? {
                Reply::Simple(_) => {}
                _ => return Err(CallError::Protocol("SELECT refused")),
            }
        }
        Ok(conn)
    }
}

async fn roundtrip(conn: &mut Conn, args: &[&[u8]]) -> Result<Reply, CallError> {
    conn.get_mut().write_all(&encode(args)).await?;
    read_reply(conn, 0).await
}

/// A command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<Vec<u8>, CallError> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(MAX_LEN as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Err(CallError::Protocol("connection closed"));
    }
    if !line.ends_with(b"\r\n") {
        return Err(CallError::Protocol("line not terminated"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_int(b: &[u8]) -> Result<i64, CallError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(CallError::Protocol("bad integer"))
}

fn read_reply<'a, R: AsyncRead + Unpin + Send>(
    r: &'a mut BufReader<R>,
    depth: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, CallError>> + Send + 'a>> {
    Box::pin(async move {
        if depth > 4 {
            return Err(CallError::Protocol("nesting too deep"));
        }
        let line = read_line(r).await?;
        let (&kind, rest) = line
            .split_first()
            .ok_or(CallError::Protocol("empty line"))?;
        match kind {
            b'+' => Ok(Reply::Simple(String::from_utf8_lossy(rest).into_owned())),
            b'-' => {
                let word = rest.split(|&c| c == b' ').next().unwrap_or_default();
                Ok(Reply::Error(String::from_utf8_lossy(word).into_owned()))
            }
            b':' => Ok(Reply::Int(parse_int(rest)?)),
            b'$' => {
                let n = parse_int(rest)?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let n = usize::try_from(n).map_err(|_| CallError::Protocol("bad length"))?;
                if n > MAX_LEN {
                    return Err(CallError::Protocol("bulk string too long"));
                }
                let mut buf = vec![0u8; n + 2];
                r.read_exact(&mut buf).await?;
                buf.truncate(n);
                Ok(Reply::Bulk(Some(buf)))
            }
            b'*' => {
                let n = parse_int(rest)?;
                if n < 0 {
                    return Ok(Reply::Array(Vec::new()));
                }
                let n = usize::try_from(n).map_err(|_| CallError::Protocol("bad length"))?;
                if n > MAX_ITEMS {
                    return Err(CallError::Protocol("array too long"));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(read_reply(r, depth + 1).await?);
                }
                Ok(Reply::Array(items))
            }
            _ => Err(CallError::Protocol("unknown reply type")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &'static [u8]) -> Result<Reply, CallError> {
        let mut r = BufReader::new(bytes);
        read_reply(&mut r, 0).await
    }

    #[tokio::test]
    async fn replies_parse_and_errors_keep_only_their_first_word() {
        assert_eq!(parse(b":42\r\n").await.unwrap(), Reply::Int(42));
        assert_eq!(parse(b"+OK\r\n").await.unwrap(), Reply::Simple("OK".into()));
        assert_eq!(parse(b"$-1\r\n").await.unwrap(), Reply::Bulk(None));
        assert_eq!(
            parse(b"$3\r\nabc\r\n").await.unwrap(),
            Reply::Bulk(Some(b"abc".to_vec()))
        );
        assert_eq!(
            parse(b"*2\r\n:1\r\n:-7\r\n").await.unwrap(),
            Reply::Array(vec![Reply::Int(1), Reply::Int(-7)])
        );
        assert_eq!(
            parse(b"-WRONGPASS invalid username-password pair hunter2\r\n")
                .await
                .unwrap(),
            Reply::Error("WRONGPASS".into())
        );
        assert!(parse(b":12").await.is_err(), "unterminated");
        assert!(parse(b"$99999999\r\n").await.is_err(), "too long");
        assert!(parse(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n")
            .await
            .is_err());
        assert_eq!(
            encode(&[b"GET", b"k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
        );
    }
}
