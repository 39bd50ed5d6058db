//! Bounds on duration settings, one table: each timeout is positive and at most a few hours, the
//! drain fits in the grace period, and nothing polls Vault more than once a second (a Vault on
//! loopback, a dev server or a local agent, may be polled every 100ms). Messages name the field.

use std::time::Duration;

use super::types::{Config, FsyncPolicy, SecretConfig};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// One duration setting: its field, its value, the least and the most it may be.
struct Bound(String, Duration, Duration, Duration);

fn b(field: &str, v: Duration, lo: Duration, hi: Duration) -> Bound {
    Bound(field.to_string(), v, lo, hi)
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl Config {
    /// Every duration outside its bounds, as `(field, message)`.
    pub(super) fn validate_durations(&self, err: &mut impl FnMut(&str, String)) {
        let (s, a, l) = (&self.server, &self.audit, &self.limits);
        let mut table = vec![
            b("server.drain_delay", s.drain_delay, Duration::ZERO, HOUR),
            b(
                "server.shutdown_grace",
                s.shutdown_grace,
                Duration::ZERO,
                HOUR,
            ),
            b(
                "server.tls_reload_interval",
                s.tls_reload_interval,
                100 * MS,
                HOUR,
            ),
            b("audit.max_wait", a.max_wait, MS, 5 * MIN),
            b(
                "limits.header_read_timeout",
                l.header_read_timeout,
                MS,
                5 * MIN,
            ),
            b("limits.body_timeout", l.body_timeout, MS, 24 * HOUR),
            b("limits.send_timeout", l.send_timeout, MS, 24 * HOUR),
            b("limits.idle_timeout", l.idle_timeout, MS, 24 * HOUR),
        ];
        if !s.config_poll_interval.is_zero() {
            table.push(b(
                "server.config_poll_interval",
                s.config_poll_interval,
                100 * MS,
                HOUR,
            ));
        }
        if a.fsync == FsyncPolicy::Interval {
            table.push(b("audit.fsync_interval", a.fsync_interval, MS, HOUR));
        }
        if a.anchor.is_some() {
            table.push(b("audit.anchor_interval", a.anchor_interval, SEC, HOUR));
        }
        // Every upstream (`upstream` or `upstreams[i]`) and its secret source.
        for up in self.upstream_list() {
            let (cfg, at) = (up.cfg, &up.field);
            table.push(b(
                &format!("{at}.connect_timeout"),
                cfg.connect_timeout,
                MS,
                5 * MIN,
            ));
            table.push(b(
                &format!("{at}.response_timeout"),
                cfg.response_timeout,
                MS,
                24 * HOUR,
            ));
            let idle = cfg.pool_idle_timeout;
            table.push(b(
                &format!("{at}.pool_idle_timeout"),
                idle,
                Duration::ZERO,
                24 * HOUR,
            ));
            let sf = &up.secret_field;
            match up.secret {
                None => {}
                Some(SecretConfig::File(file)) => {
                    let field = format!("{sf}.poll_interval");
                    table.push(b(&field, file.poll_interval, 10 * MS, HOUR));
                }
                Some(SecretConfig::Vault(vault)) => {
                    let floor = if loopback(&vault.address) {
                        100 * MS
                    } else {
                        SEC
                    };
                    table.push(b(&format!("{sf}.refresh"), vault.refresh, floor, 24 * HOUR));
                    let stale = vault.max_staleness;
                    table.push(b(&format!("{sf}.max_staleness"), stale, MS, 7 * 24 * HOUR));
                    table.push(b(&format!("{sf}.timeout"), vault.timeout, MS, 5 * MIN));
                }
            }
        }
        for Bound(field, v, lo, hi) in table {
            let field = field.as_str();
            if v < lo && lo == MS {
                err(field, "must be greater than 0".into());
            } else if v < lo {
                err(
                    field,
                    format!("{} is too short: at least {}", human(v), human(lo)),
                );
            } else if v > hi {
                err(
                    field,
                    format!("{} is too long: at most {}", human(v), human(hi)),
                );
            }
        }
        if s.drain_delay > s.shutdown_grace {
            err(
                "server.drain_delay",
                format!(
                    "{} is longer than server.shutdown_grace ({}): the drain must fit in the grace period",
                    human(s.drain_delay),
                    human(s.shutdown_grace)
                ),
            );
        }
    }
}

/// Whether a Vault address names a loopback host (`127.0.0.0/8`, `::1`, `localhost`).
fn loopback(address: &str) -> bool {
    let Ok(u) = address.parse::<http::Uri>() else {
        return false;
    };
    match u
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
    {
        Some("localhost") => true,
        Some(h) => h
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}
