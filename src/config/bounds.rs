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
struct Bound(&'static str, Duration, Duration, Duration);

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl Config {
    /// Every duration outside its bounds, as `(field, message)`.
    pub(super) fn validate_durations(&self, err: &mut impl FnMut(&str, String)) {
        let (s, u, a, l) = (&self.server, &self.upstream, &self.audit, &self.limits);
        let mut table = vec![
            Bound("server.drain_delay", s.drain_delay, Duration::ZERO, HOUR),
            Bound(
                "server.shutdown_grace",
                s.shutdown_grace,
                Duration::ZERO,
                HOUR,
            ),
            Bound("upstream.connect_timeout", u.connect_timeout, MS, 5 * MIN),
            Bound(
                "upstream.response_timeout",
                u.response_timeout,
                MS,
                24 * HOUR,
            ),
            Bound(
                "upstream.pool_idle_timeout",
                u.pool_idle_timeout,
                Duration::ZERO,
                24 * HOUR,
            ),
            Bound("audit.max_wait", a.max_wait, MS, 5 * MIN),
            Bound(
                "limits.header_read_timeout",
                l.header_read_timeout,
                MS,
                5 * MIN,
            ),
            Bound("limits.body_timeout", l.body_timeout, MS, 24 * HOUR),
            Bound("limits.send_timeout", l.send_timeout, MS, 24 * HOUR),
            Bound("limits.idle_timeout", l.idle_timeout, MS, 24 * HOUR),
        ];
        if a.fsync == FsyncPolicy::Interval {
            table.push(Bound("audit.fsync_interval", a.fsync_interval, MS, HOUR));
        }
        match &self.secret {
            SecretConfig::File(file) => {
                table.push(Bound(
                    "secret.poll_interval",
                    file.poll_interval,
                    10 * MS,
                    HOUR,
                ));
            }
            SecretConfig::Vault(vault) => {
                let floor = if loopback(&vault.address) {
                    100 * MS
                } else {
                    SEC
                };
                table.push(Bound("secret.refresh", vault.refresh, floor, 24 * HOUR));
                table.push(Bound(
                    "secret.max_staleness",
                    vault.max_staleness,
                    MS,
                    7 * 24 * HOUR,
                ));
                table.push(Bound("secret.timeout", vault.timeout, MS, 5 * MIN));
            }
        }
        for Bound(field, v, lo, hi) in table {
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
