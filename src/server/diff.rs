//! What a config reload changes, by name only: clients added/removed/changed (by id), upstreams
//! added/removed/changed (by name), the other sections that differ, and the settings that differ
//! from the values in force since start but cannot change while running (`needs_restart`).

use crate::audit::Diff;
use crate::config::Config;

/// Settings read once at start (listeners, threads, the audit trail, the exporter, the shared
/// limit backend, the connection caps, the TLS files' paths; their contents reload on their own).
pub fn needs_restart(started: &Config, new: &Config) -> Vec<String> {
    let (s, n) = (&started.server, &new.server);
    let (sl, nl) = (&started.limits, &new.limits);
    let (sr, nr) = (&started.ratelimit, &new.ratelimit);
    let checks: [(&str, bool); 15] = [
        ("server.listen", s.listen != n.listen),
        (
            "server.tls_reload_interval",
            s.tls_reload_interval != n.tls_reload_interval,
        ),
        ("server.workers", s.workers != n.workers),
        ("server.tls_cert", s.tls_cert != n.tls_cert),
        ("server.tls_key", s.tls_key != n.tls_key),
        ("server.client_ca", s.client_ca != n.client_ca),
        ("server.client_auth", s.client_auth != n.client_auth),
        ("admin.listen", started.admin.listen != new.admin.listen),
        ("audit", started.audit != new.audit),
        ("telemetry", started.telemetry != new.telemetry),
        (
            "limits.max_connections",
            sl.max_connections != nl.max_connections,
        ),
        (
            "limits.max_connections_per_ip",
            sl.max_connections_per_ip != nl.max_connections_per_ip,
        ),
        (
            "limits.unauthenticated_rpm_per_ip",
            sl.unauthenticated_rpm_per_ip != nl.unauthenticated_rpm_per_ip,
        ),
        ("ratelimit.backend", sr.backend != nr.backend),
        (
            "ratelimit (all but stream_usage)",
            sr.redis_url != nr.redis_url
                || sr.redis_password_file != nr.redis_password_file
                || sr.ca_file != nr.ca_file
                || sr.timeout != nr.timeout
                || sr.failure_mode != nr.failure_mode
                || sr.key_prefix != nr.key_prefix,
        ),
    ];
    changed(&checks)
}

/// Clients by id: added, removed, and those whose settings differ.
pub fn clients(old: &Config, new: &Config) -> Diff {
    let key = |c: &crate::config::ClientConfig| c.id.clone();
    by_name(&old.clients, &new.clients, key)
}

/// Upstreams by name (with their secret settings and model claims).
pub fn upstreams(old: &Config, new: &Config) -> Diff {
    let view = |c: &Config| {
        c.upstream_list()
            .into_iter()
            .map(|u| {
                (
                    u.name.to_string(),
                    (u.cfg.clone(), u.secret.cloned(), u.models, u.default),
                )
            })
            .collect::<Vec<_>>()
    };
    by_name(&view(old), &view(new), |(n, _)| n.clone())
}

/// The other top-level sections that differ (clients and upstreams are reported on their own).
pub fn settings(old: &Config, new: &Config) -> Vec<String> {
    let checks = [
        ("server", old.server != new.server),
        ("admin", old.admin != new.admin),
        ("auth", old.auth != new.auth),
        ("audit", old.audit != new.audit),
        ("limits", old.limits != new.limits),
        ("ratelimit", old.ratelimit != new.ratelimit),
        ("telemetry", old.telemetry != new.telemetry),
    ];
    changed(&checks)
}

/// The names whose check says changed.
fn changed(checks: &[(&str, bool)]) -> Vec<String> {
    checks
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(f, _)| f.to_string())
        .collect()
}

fn by_name<T: PartialEq>(old: &[T], new: &[T], name: impl Fn(&T) -> String) -> Diff {
    let mut d = Diff::default();
    for n in new {
        match old.iter().find(|o| name(o) == name(n)) {
            None => d.added.push(name(n)),
            Some(o) if o != n => d.changed.push(name(n)),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|n| name(n) == name(o)) {
            d.removed.push(name(o));
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n[secret]\nsource = \"file\"\npath = \"/k\"\n{extra}"
        );
        crate::config::parse(&text).unwrap()
    }

    const A: &str = "[[clients]]\nid = \"a\"\nkey_sha256 = \"00\"\n";
    const B: &str = "[[clients]]\nid = \"b\"\nkey_sha256 = \"11\"\n";

    #[test]
    fn clients_are_diffed_by_id() {
        let old = cfg(&format!("{A}{B}"));
        let new = cfg(&format!(
            "{A}rpm = 5\n[[clients]]\nid = \"c\"\nkey_sha256 = \"22\"\n"
        ));
        let d = clients(&old, &new);
        assert_eq!(d.added, ["c"]);
        assert_eq!(d.removed, ["b"]);
        assert_eq!(d.changed, ["a"]);
        assert!(clients(&old, &old).is_empty());
    }

    #[test]
    fn restart_only_settings_are_named_and_the_rest_is_live() {
        let old = cfg("[server]\nlisten = \"127.0.0.1:1\"\n");
        let new = cfg(
            "[server]\nlisten = \"127.0.0.1:2\"\nroute_prefixes = [\"/v2/\"]\n[limits]\nmax_body_bytes = 10\nmax_connections = 5\n[audit]\npath = \"/tmp/x\"\n",
        );
        assert_eq!(
            needs_restart(&old, &new),
            ["server.listen", "audit", "limits.max_connections"]
        );
        assert_eq!(settings(&old, &new), ["server", "audit", "limits"]);
        assert!(needs_restart(&old, &old).is_empty());
    }

    #[test]
    fn an_upstreams_secret_or_models_change_is_a_change() {
        let old = cfg("");
        let text = "[upstream]\nurl = \"http://127.0.0.1:9\"\n[secret]\nsource = \"file\"\npath = \"/other\"\n";
        let new = crate::config::parse(text).unwrap();
        assert_eq!(upstreams(&old, &new).changed, ["default"]);
        assert!(upstreams(&old, &old).is_empty());
    }
}
