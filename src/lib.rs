//! nimgate: an authenticating reverse proxy that keeps the NVIDIA NIM API key out of
//! environment variables. See README.md and ../shared/DESIGN.md; `app.rs` shows the whole path
//! of one request.

pub mod app;
pub mod audit;
pub mod auth;
pub mod body;
pub mod cli;
mod commands;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod error;
#[cfg(feature = "demo")]
pub mod fakenim;
pub mod fleet;
pub mod hardening;
pub mod health;
pub mod hist;
mod keys;
pub(crate) mod lockfile;
pub mod names;
pub mod proxy;
pub mod request;
pub mod secret;
pub mod server;
pub mod stall;
pub mod telemetry;
pub mod tls;
mod verify_cli;
