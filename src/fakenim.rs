//! A fake NVIDIA NIM for tests, the demo and benchmarks: OpenAI-compatible chat (with and
//! without SSE streaming), completions, embeddings, models, NIM health and metadata. It checks
//! the injected key, records the headers of every request it sees, and counts SSE streams whose
//! client went away. Test hooks (request headers): `x-fake-delay-ms` (sleep before answering),
//! `x-fake-status` (answer with that status), `x-fake-redirect` (302 to that URL),
//! `x-fake-echo-auth` (answer with the `Authorization` it received echoed: `header` in a response
//! header, `body` in a JSON body, `location` in a 302 `Location`, `401` in a 401 body).

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Request trailers, if the client sent any.
    pub trailers: Option<HeaderMap>,
}

pub struct FakeNim {
    /// Accepted `Authorization` values are `Bearer <key>` for these keys; empty = accept any.
    pub keys: Mutex<Vec<String>>,
    pub sse_delay: Mutex<Duration>,
    pub sse_events: AtomicU64,
    pub record: bool,
    pub seen: Mutex<Vec<Seen>>,
    pub requests: AtomicU64,
    pub streams_cancelled: AtomicU64,
    pub streams_completed: AtomicU64,
    /// The ids `GET /v1/models` lists.
    pub models: Mutex<Vec<String>>,
}

impl FakeNim {
    pub fn new(keys: Vec<String>, sse_delay: Duration, record: bool) -> Arc<Self> {
        Arc::new(Self {
            keys: Mutex::new(keys),
            sse_delay: Mutex::new(sse_delay),
            sse_events: AtomicU64::new(5),
            record,
            seen: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
            streams_cancelled: AtomicU64::new(0),
            streams_completed: AtomicU64::new(0),
            models: Mutex::new(vec!["meta/llama-3.1-8b-instruct".into()]),
        })
    }

    pub fn set_keys(&self, keys: Vec<String>) {
        if let Ok(mut k) = self.keys.lock() {
            *k = keys;
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Serve on `listener` (HTTP/1.1 and h2c) forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(self.clone().serve_conn(stream));
        }
    }

    /// Serve one connection (plain TCP, or a TLS stream the caller accepted).
    pub async fn serve_conn<I>(self: Arc<Self>, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let svc = hyper::service::service_fn(move |req| {
            let nim = self.clone();
            async move { Ok::<_, std::convert::Infallible>(nim.handle(req).await) }
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), svc)
            .await;
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<FakeBody> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = req.into_parts();
        let (body, trailers) = match body.collect().await {
            Ok(c) => {
                let t = c.trailers().cloned();
                (c.to_bytes(), t)
            }
            Err(_) => (Bytes::new(), None),
        };
        if self.record {
            if let Ok(mut s) = self.seen.lock() {
                s.push(Seen {
                    method: parts.method.clone(),
                    uri: parts.uri.to_string(),
                    version: parts.version,
                    headers: parts.headers.clone(),
                    body: body.clone(),
                    trailers,
                });
            }
        }
        let h = &parts.headers;
        if let Some(ms) = h
            .get("x-fake-delay-ms")
            .and_then(|v| v.to_str().ok()?.parse().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(loc) = h.get("x-fake-redirect") {
            let mut r = Response::new(FakeBody::full(Bytes::new()));
            *r.status_mut() = StatusCode::FOUND;
            r.headers_mut().insert(header::LOCATION, loc.clone());
            return r;
        }
        if let Some(how) = h.get("x-fake-echo-auth") {
            return echo_auth(how.as_bytes(), h);
        }
        if let Some(code) = h
            .get("x-fake-status")
            .and_then(|v| v.to_str().ok()?.parse().ok())
        {
            return error(
                StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT),
                "forced status",
            );
        }
        let path = parts.uri.path();
        if path.starts_with("/v1/health/") {
            return ok_json(json!({"object": "health.response", "message": "Service is ready."}));
        }
        if !self.authorized(h) {
            return error(StatusCode::UNAUTHORIZED, "invalid NIM API key");
        }
        let req_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let model = req_json["model"]
            .as_str()
            .unwrap_or("meta/llama-3.1-8b-instruct")
            .to_string();
        match (&parts.method, path) {
            (&Method::GET, "/v1/models") => {
                let ids = self.models.lock().map(|m| m.clone()).unwrap_or_default();
                let data: Vec<Value> = ids.iter().map(|id| model_object(id)).collect();
                ok_json(json!({"object": "list", "data": data}))
            }
            // `GET /v1/models/{model_id}`, as NIMs that serve it document it (the id may hold
            // `/`): the model object, or 404 for another id.
            (&Method::GET, p) if p.starts_with("/v1/models/") => {
                let id = &p["/v1/models/".len()..];
                let ids = self.models.lock().map(|m| m.clone()).unwrap_or_default();
                if ids.iter().any(|m| m == id) {
                    ok_json(model_object(id))
                } else {
                    error(StatusCode::NOT_FOUND, "The model does not exist.")
                }
            }
            (&Method::GET, "/v1/metadata") => ok_json(
                json!({"version": "1.3.3", "modelInfo": [{"shortName": "llama-3.1-8b-instruct"}]}),
            ),
            (&Method::POST, "/v1/chat/completions" | "/v1/completions") => {
                let chat = path.ends_with("chat/completions");
                if req_json["stream"].as_bool() == Some(true) {
                    let usage = req_json["stream_options"]["include_usage"].as_bool() == Some(true);
                    return self.stream(model, chat, usage);
                }
                let usage =
                    json!({"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17});
                if chat {
                    ok_json(json!({
                        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000, "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the fake NIM."}, "logprobs": null, "finish_reason": "stop"}],
                        "usage": usage
                    }))
                } else {
                    ok_json(json!({
                        "id": "cmpl-fake", "object": "text_completion", "created": 1_700_000_000, "model": model,
                        "choices": [{"index": 0, "text": " Hello from the fake NIM.", "logprobs": null, "finish_reason": "stop"}],
                        "usage": usage
                    }))
                }
            }
            (&Method::POST, "/v1/embeddings") => ok_json(json!({
                "object": "list", "model": model,
                "data": [{"index": 0, "object": "embedding", "embedding": [0.0125, -0.5, 0.25, 0.125]}],
                "usage": {"prompt_tokens": 4, "total_tokens": 4}
            })),
            _ => error(StatusCode::NOT_FOUND, "not found"),
        }
    }

    fn authorized(&self, h: &HeaderMap) -> bool {
        let Ok(keys) = self.keys.lock() else {
            return false;
        };
        if keys.is_empty() {
            return true;
        }
        let got: Vec<_> = h.get_all(header::AUTHORIZATION).iter().collect();
        got.len() == 1
            && keys
                .iter()
                .any(|k| got[0].as_bytes() == format!("Bearer {k}").as_bytes())
    }

    fn stream(self: Arc<Self>, model: String, chat: bool, usage: bool) -> Response<FakeBody> {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let delay = self.sse_delay.lock().map(|d| *d).unwrap_or_default();
        let n = self.sse_events.load(Ordering::Relaxed);
        let nim = self.clone();
        tokio::spawn(async move {
            for i in 0..n {
                let chunk = if chat {
                    json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                           "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}, "logprobs": null, "finish_reason": if i + 1 == n { Value::from("stop") } else { Value::Null }}]})
                } else {
                    json!({"id": "cmpl-fake", "object": "text_completion", "created": 1_700_000_000, "model": model,
                           "choices": [{"index": 0, "text": format!("tok{i} "), "logprobs": null, "finish_reason": if i + 1 == n { Value::from("stop") } else { Value::Null }}]})
                };
                if i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                // Send time (Unix µs): benchmarks measure per-event forwarding delay with it.
                let mut chunk = chunk;
                chunk["x_sent_unix_us"] = Value::from(unix_micros());
                if tx
                    .send(Bytes::from(format!("data: {chunk}\n\n")))
                    .await
                    .is_err()
                {
                    nim.streams_cancelled.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            if usage {
                let u = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [],
                               "usage": {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n}});
                let _ = tx.send(Bytes::from(format!("data: {u}\n\n"))).await;
            }
            if tx
                .send(Bytes::from_static(b"data: [DONE]\n\n"))
                .await
                .is_err()
            {
                nim.streams_cancelled.fetch_add(1, Ordering::Relaxed);
                return;
            }
            nim.streams_completed.fetch_add(1, Ordering::Relaxed);
        });
        let mut r = Response::new(FakeBody::Channel(rx));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-cache"),
        );
        r
    }
}

pub enum FakeBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
}

impl FakeBody {
    fn full(b: Bytes) -> Self {
        Self::Full(Some(b))
    }
}

impl hyper::body::Body for FakeBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }
    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Full(b) => {
                http_body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            Self::Channel(_) => http_body::SizeHint::default(),
        }
    }
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The `x-fake-echo-auth` hook: the received `Authorization` echoed back the way `how` names.
fn echo_auth(how: &[u8], h: &HeaderMap) -> Response<FakeBody> {
    let auth = h
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    match how {
        b"header" => {
            let mut r = ok_json(json!({"ok": true}));
            if let Ok(v) = http::HeaderValue::from_str(&auth) {
                r.headers_mut().insert("x-echo", v);
            }
            r
        }
        b"location" => {
            let mut r = Response::new(FakeBody::full(Bytes::new()));
            *r.status_mut() = StatusCode::FOUND;
            if let Ok(v) = http::HeaderValue::from_str(&format!("https://elsewhere.test/?k={auth}"))
            {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        b"401" => error(StatusCode::UNAUTHORIZED, &format!("bad key: {auth}")),
        _ => ok_json(json!({"echo": auth, "again": auth})),
    }
}

fn ok_json(v: Value) -> Response<FakeBody> {
    let mut r = Response::new(FakeBody::full(Bytes::from(v.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: &str) -> Response<FakeBody> {
    let mut r = ok_json(
        json!({"error": {"message": msg, "type": "invalid_request_error", "code": status.as_u16()}}),
    );
    *r.status_mut() = status;
    r
}

/// Its model object, as `/v1/models` lists it (vLLM's fields).
fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "system", "root": id, "parent": null, "max_model_len": 131_072})
}
