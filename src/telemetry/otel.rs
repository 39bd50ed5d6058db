//! The OpenTelemetry trace pipeline, built only when `[telemetry] otlp_endpoint` is set:
//! `tracing` spans of target `nimgate::otel` → `tracing-opentelemetry` → a parent-based ratio
//! sampler → `Gate` (the bounded queue: a full queue drops the span and counts it) → the SDK's
//! batch processor (its own thread, never the request path) → `Counting` (spans of a failed or
//! timed-out export are counted as dropped) → OTLP/HTTP protobuf via a blocking reqwest client
//! (the reqwest vaultrs already brings; its timeout bounds a hanging collector).
//!
//! `enabled()` is the one switch the request path checks: when it is false no span is created,
//! nothing is recorded and no header is touched.
//!
//! Sampling is decided once, before a span exists (`spans::server`): a W3C parent's sampled flag
//! is followed, a root request is sampled by `sample_root` (`sample_ratio`). An unsampled request
//! builds no span at all, so a low ratio costs almost nothing per request; the SDK sampler only
//! sees spans already chosen and is `ParentBased(AlwaysOn)` (a second ratio there would square
//! the ratio). `sample_root` is a SplitMix64 sequence from a random seed: lock-free, one atomic
//! add, and independent of the trace ids the SDK generates.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::TelemetryConfig;

/// The target of every span meant for export (the OTel layer sees only these).
pub const TARGET: &str = "nimgate::otel";

static ENABLED: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// `sample_root` passes when a 53-bit draw is below this (`threshold(sample_ratio)`).
static ROOT_THRESHOLD: AtomicU64 = AtomicU64::new(0);
/// The SplitMix64 state behind `sample_root` (seeded at `init`).
static DRAW: AtomicU64 = AtomicU64::new(0);

/// `ratio` (0.0..=1.0) as a threshold for 53-bit draws: 0 never passes, 1.0 always does.
pub(crate) fn threshold(ratio: f64) -> u64 {
    (ratio.clamp(0.0, 1.0) * (1u64 << 53) as f64) as u64
}

/// The SplitMix64 output for the state `z`, reduced to 53 bits.
pub(crate) fn draw(z: u64) -> u64 {
    let mut z = z;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) >> 11
}

/// The SplitMix64 state increment (the golden ratio in 64 bits).
pub(crate) const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// Whether a trace nimgate starts itself (no parent) is sampled, at `sample_ratio`.
pub fn sample_root() -> bool {
    let z = DRAW
        .fetch_add(GOLDEN, Ordering::Relaxed)
        .wrapping_add(GOLDEN);
    draw(z) < ROOT_THRESHOLD.load(Ordering::Relaxed)
}

/// Whether spans are exported (set once at start).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Spans dropped so far (queue full, or their export failed).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The running pipeline; `shutdown` flushes what is queued.
pub struct Otel {
    provider: SdkTracerProvider,
    pub tracer: SdkTracer,
}

impl Otel {
    /// Export what is queued, waiting at most `timeout`.
    pub fn shutdown(&self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %e, "trace exporter shutdown incomplete");
        }
    }
}

/// Build the pipeline from `[telemetry]`; `Ok(None)` without an endpoint. Call outside an
/// async runtime (the blocking HTTP client owns one of its own).
pub fn init(cfg: &TelemetryConfig) -> Result<Option<Otel>, String> {
    let Some(endpoint) = &cfg.otlp_endpoint else {
        return Ok(None);
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = http_client(endpoint, cfg)?;
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(http)
        .with_endpoint(url)
        .with_timeout(cfg.export_timeout)
        .with_headers(headers(cfg)?)
        .build()
        .map_err(|e| format!("telemetry.otlp_endpoint: cannot build the exporter: {e}"))?;
    let queued = Arc::new(AtomicUsize::new(0));
    let batch = BatchSpanProcessor::builder(Counting {
        inner: exporter,
        queued: queued.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            // `Gate` bounds the queue; the SDK's own bound sits above it so it never drops.
            .with_max_queue_size(cfg.max_queue_size + cfg.max_export_batch_size)
            .with_max_export_batch_size(cfg.max_export_batch_size)
            .with_scheduled_delay(cfg.export_interval)
            .build(),
    )
    .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Gate {
            inner: batch,
            queued,
            max: cfg.max_queue_size,
        })
        // The ratio was applied before the span was built (`sample_root`, module header).
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(
            Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("nimgate");
    let mut seed = [0u8; 8];
    // Without OS randomness the draws still spread evenly, just from a fixed start.
    let _ = getrandom::getrandom(&mut seed);
    DRAW.store(u64::from_le_bytes(seed), Ordering::Relaxed);
    ROOT_THRESHOLD.store(threshold(cfg.sample_ratio), Ordering::Relaxed);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(Otel { provider, tracer }))
}

/// No redirects, no proxy from the environment, `ca_file` merged into the roots, and the
/// export timeout on every request.
fn http_client(endpoint: &str, cfg: &TelemetryConfig) -> Result<reqwest::blocking::Client, String> {
    let mut b = reqwest::blocking::Client::builder()
        .tls_backend_rustls()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(cfg.export_timeout);
    if endpoint.starts_with("http://") {
        b = b.tls_certs_only(Vec::new());
    } else if let Some(path) = &cfg.ca_file {
        let certs = crate::tls::reqwest_roots(path, "telemetry.ca_file")?;
        b = b.tls_certs_merge(certs);
    }
    b.build()
        .map_err(|e| format!("telemetry: cannot build the OTLP HTTP client: {e}"))
}

/// `Name: value` lines of `headers_file` (blank lines and `#` comments skipped). The values are
/// never logged; an error names the line number only.
fn headers(cfg: &TelemetryConfig) -> Result<HashMap<String, String>, String> {
    let mut h = HashMap::new();
    let Some(path) = &cfg.headers_file else {
        return Ok(h);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("telemetry.headers_file {}: {}", path.display(), e.kind()))?;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line.split_once(':').and_then(|(n, v)| {
            let n = http::HeaderName::from_bytes(n.trim().as_bytes()).ok()?;
            http::HeaderValue::from_str(v.trim()).ok()?;
            Some((n.as_str().to_string(), v.trim().to_string()))
        });
        let (n, v) = parsed.ok_or_else(|| {
            format!(
                "telemetry.headers_file {}: line {} is not `Name: value`",
                path.display(),
                i + 1
            )
        })?;
        h.insert(n, v);
    }
    Ok(h)
}

/// The bounded queue in front of the batch processor: a span beyond `max` queued is dropped
/// (and counted) at once instead of waiting for room.
#[derive(Debug)]
struct Gate<P> {
    inner: P,
    queued: Arc<AtomicUsize>,
    max: usize,
}

impl<P: SpanProcessor> SpanProcessor for Gate<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, r: &Resource) {
        self.inner.set_resource(r);
    }
}

/// Gives queue room back per exported batch; a failed batch's spans count as dropped.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let n = batch.len();
        let fut = self.inner.export(batch);
        let queued = self.queued.clone();
        async move {
            let r = fut.await;
            queued.fetch_sub(n, Ordering::AcqRel);
            if r.is_err() {
                DROPPED.fetch_add(n as u64, Ordering::Relaxed);
            }
            r
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, r: &Resource) {
        self.inner.set_resource(r);
    }
}
