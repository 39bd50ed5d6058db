//! `Config::validate_clients()`: the `[[clients]]` entries (and those of `auth.clients_file`),
//! each problem naming `clients[N].field`.

use std::collections::HashSet;

use super::types::Config;

impl Config {
    /// `[[clients]]` (including those from `auth.clients_file`).
    pub(super) fn validate_clients(&self, err: &mut impl FnMut(&str, String)) {
        if self.clients.is_empty() {
            err(
                "clients",
                "no client keys configured; add [[clients]] (see `nimgate keys new`)".into(),
            );
        }
        let mut ids = HashSet::new();
        let mut digests = HashSet::new();
        let mut subjects = HashSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            let f = |k: &str| format!("clients[{i}].{k}");
            if c.id.is_empty() || c.id.len() > 128 || c.id.chars().any(char::is_control) {
                err(&f("id"), "must be 1–128 printable characters".into());
            }
            if !ids.insert(&c.id) {
                err(&f("id"), format!("duplicate client id {:?}", c.id));
            }
            match &c.key_sha256 {
                Some(d) => {
                    let d = d.to_ascii_lowercase();
                    if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                        err(
                            &f("key_sha256"),
                            "must be 64 hex characters (a SHA-256 digest)".into(),
                        );
                    } else if !digests.insert(d) {
                        err(&f("key_sha256"), "same digest as another client".into());
                    }
                }
                None if c.jwt_subject.is_none()
                    && c.cert_san_uri.is_none()
                    && c.cert_san_dns.is_none() =>
                {
                    err(
                        &f("key_sha256"),
                        "missing: a client needs key_sha256, jwt_subject or cert_san_uri/cert_san_dns"
                            .into(),
                    );
                }
                None => {}
            }
            self.validate_jwt_client(c, &f, &mut subjects, err);
            if let Err(m) = c.expires_at() {
                err(&f("expires"), m);
            }
            if c.rpm == Some(0) {
                err(
                    &f("rpm"),
                    "must be at least 1 (omit it for no limit)".into(),
                );
            }
            if c.burst == Some(0) {
                err(&f("burst"), "must be at least 1".into());
            }
            if c.max_concurrent == Some(0) {
                err(&f("max_concurrent"), "must be at least 1".into());
            }
            for (name, v) in [("tpm", c.tpm), ("tokens_per_day", c.tokens_per_day)] {
                if v == Some(0) {
                    err(
                        &f(name),
                        "must be at least 1 (omit it for no budget)".into(),
                    );
                }
            }
            for m in c.models.iter().flatten() {
                if let Err(why) = super::upstreams::check_pattern(m) {
                    err(&f("models"), format!("{m:?}: {why}"));
                }
            }
        }
    }

    /// A client's `jwt_subject` / `jwt_issuer`: unique per issuer, and only with `[[auth.jwt]]`.
    fn validate_jwt_client<'a>(
        &self,
        c: &'a super::types::ClientConfig,
        f: &impl Fn(&str) -> String,
        subjects: &mut HashSet<(Option<&'a str>, &'a str)>,
        err: &mut impl FnMut(&str, String),
    ) {
        if let Some(iss) = &c.jwt_issuer {
            if c.jwt_subject.is_none() {
                err(&f("jwt_issuer"), "only with jwt_subject".into());
            } else if !self.auth.jwt.iter().any(|j| &j.issuer == iss) {
                err(
                    &f("jwt_issuer"),
                    "not the issuer of any [[auth.jwt]]".into(),
                );
            }
        }
        for (k, v) in [
            ("cert_san_uri", &c.cert_san_uri),
            ("cert_san_dns", &c.cert_san_dns),
        ] {
            if v.is_some() && self.server.client_ca.is_none() {
                err(&f(k), "needs [server] client_ca".into());
            }
        }
        let Some(sub) = &c.jwt_subject else { return };
        if sub.is_empty() {
            err(&f("jwt_subject"), "must not be empty".into());
        } else if self.auth.jwt.is_empty() {
            err(&f("jwt_subject"), "needs an [[auth.jwt]] issuer".into());
        } else if !subjects.insert((c.jwt_issuer.as_deref(), sub.as_str())) {
            err(&f("jwt_subject"), "same subject as another client".into());
        }
    }
}
