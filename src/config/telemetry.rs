//! The `[telemetry]` schema: where spans are exported (OTLP/HTTP protobuf) and how many are
//! sampled. No section, or no `otlp_endpoint`, means no exporter and no per-request span work.
//! Export headers (a collector's API token) come from `headers_file`, never from the config
//! text or the environment.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use super::types::{dur, millis, secs};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `http(s)://host:port`: spans are POSTed to `{otlp_endpoint}/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// Only `http/protobuf` is built in (`grpc` is refused with an error naming this field).
    pub otlp_protocol: String,
    pub service_name: String,
    /// Root sampling ratio 0.0..=1.0; an incoming sampled `traceparent` is always followed.
    pub sample_ratio: f64,
    /// PEM CA bundle for an `https` endpoint (the system roots otherwise).
    pub ca_file: Option<PathBuf>,
    /// `Name: value` lines sent with every export (e.g. a collector token); read once at start.
    pub headers_file: Option<PathBuf>,
    /// Spans queued for export; beyond it new spans are dropped (and counted).
    pub max_queue_size: usize,
    /// Spans per export request.
    pub max_export_batch_size: usize,
    /// How often the queue is exported.
    #[serde(with = "dur")]
    pub export_interval: Duration,
    /// Longest wait for one export request (a hanging collector costs this, off the request path).
    #[serde(with = "dur")]
    pub export_timeout: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: "http/protobuf".into(),
            service_name: "nimgate".into(),
            sample_ratio: 1.0,
            ca_file: None,
            headers_file: None,
            max_queue_size: 2048,
            max_export_batch_size: 512,
            export_interval: millis::<1000>(),
            export_timeout: secs::<5>(),
        }
    }
}

impl TelemetryConfig {
    /// Problems, each with the field it is about.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Some(e) = &self.otlp_endpoint {
            match e.parse::<http::Uri>() {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http" | "https"))
                        && u.authority().is_some()
                        && !u.authority().is_some_and(|a| a.as_str().contains('@')) => {}
                _ => p.push((
                    "telemetry.otlp_endpoint",
                    "must be an http:// or https:// URL with a host (no userinfo)".into(),
                )),
            }
        }
        match self.otlp_protocol.as_str() {
            "http/protobuf" => {}
            "grpc" => p.push((
                "telemetry.otlp_protocol",
                "\"grpc\" is not built into nimgate: use \"http/protobuf\" (the collector's OTLP/HTTP port, usually 4318)".into(),
            )),
            _ => p.push(("telemetry.otlp_protocol", "must be \"http/protobuf\"".into())),
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            p.push((
                "telemetry.sample_ratio",
                "must be between 0.0 and 1.0".into(),
            ));
        }
        if self.service_name.trim().is_empty() {
            p.push(("telemetry.service_name", "must not be empty".into()));
        }
        if self.max_queue_size == 0 || self.max_export_batch_size == 0 {
            p.push((
                "telemetry.max_queue_size",
                "max_queue_size and max_export_batch_size must be at least 1".into(),
            ));
        }
        if self.export_timeout.is_zero() || self.export_interval.is_zero() {
            p.push((
                "telemetry.export_timeout",
                "export_timeout and export_interval must be above zero".into(),
            ));
        }
        p
    }
}
