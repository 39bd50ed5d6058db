//! Header names the gateway itself reads or writes: a leaf module, so that `error`, `proxy` and
//! the layers can share them without importing each other.

use http::HeaderName;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub const API_KEY: HeaderName = HeaderName::from_static("api-key");
pub const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
