//! Routing metrics by upstream (`nimgate_upstream_*`): ejections, failed health checks, attempts
//! moved to another replica, replicas in rotation; and certificate reloads of the listener and
//! each upstream (`nimgate_tls_reloads_total`). Rendered after the other families.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::render::family;

/// Routing metrics, by upstream (its configured name; never a URL or a key): ejections,
/// failed health checks, attempts moved to another replica, replicas in rotation.
pub fn render_routes(routes: &crate::proxy::Routes) -> String {
    let mut o = String::new();
    let now = crate::proxy::replica::now_ms();
    type Get = fn(&crate::proxy::Upstream) -> u64;
    let counters: [(&str, &str, Get); 3] = [
        (
            "nimgate_upstream_ejections_total",
            "Replicas ejected after consecutive connect failures or 5xx answers.",
            |u| u.stats.ejections.load(Ordering::Relaxed),
        ),
        (
            "nimgate_upstream_health_check_failures_total",
            "Active health checks (GET /v1/health/ready) that failed.",
            |u| u.stats.health_check_failures.load(Ordering::Relaxed),
        ),
        (
            "nimgate_upstream_retries_total",
            "Requests moved to another replica after a connect failure (nothing was sent).",
            |u| u.stats.retries.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in counters {
        family(&mut o, name, "counter", help);
        for u in routes.all() {
            let _ = writeln!(o, "{name}{{upstream=\"{}\"}} {}", u.name, get(u));
        }
    }
    family(
        &mut o,
        "nimgate_upstream_replicas_up",
        "gauge",
        "Replicas taking requests (not ejected, not failing their health check).",
    );
    for u in routes.all() {
        let up = u.replicas.iter().filter(|r| r.is_up(now)).count();
        let _ = writeln!(
            o,
            "nimgate_upstream_replicas_up{{upstream=\"{}\"}} {up}",
            u.name
        );
    }
    o
}

/// `nimgate_tls_reloads_total{what,outcome}`: certificate-file reloads of the listener
/// (`what="server"`) and of each upstream (`what="upstream:<name>"`), applied or refused. The
/// load at start is not counted; both outcomes are always listed (alerts use `increase`).
pub fn render_tls(server: Option<&crate::tls::ServerTls>, routes: &crate::proxy::Routes) -> String {
    let mut o = String::new();
    family(
        &mut o,
        "nimgate_tls_reloads_total",
        "counter",
        "Changed certificate, key or CA files taken (applied) or refused (kept the current ones), by listener or upstream.",
    );
    let units = server
        .map(crate::tls::ServerTls::stats)
        .into_iter()
        .chain(routes.all().iter().map(|u| u.tls.stats()));
    for s in units {
        for (outcome, n) in [("applied", &s.applied), ("refused", &s.refused)] {
            let _ = writeln!(
                o,
                "nimgate_tls_reloads_total{{what=\"{}\",outcome=\"{outcome}\"}} {}",
                super::labels::escape(&s.what),
                n.load(Ordering::Relaxed)
            );
        }
    }
    o
}
