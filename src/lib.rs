//! nimgate: an authenticating reverse proxy that keeps the NVIDIA NIM API key out of
//! environment variables. See README.md and ../shared/DESIGN.md.
#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod fakenim;
pub mod hardening;
pub mod health;
pub mod layers;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod stall;
pub mod telemetry;
pub mod tls;
