//! The upstreams of a config: the list both forms (the single `[upstream]`, `[[upstreams]]`)
//! resolve to, and the routing checks (model patterns, one claim per model, one default). The
//! `[upstream]` schema itself is `upstream.rs`.
//!
//! Model patterns: an exact name, or a prefix ending in `*` (`*` alone matches every model). A
//! request's model goes to the upstream claiming it exactly; failing that, to the one whose
//! pattern has the longest prefix. Two upstreams may not claim the same name or pattern.

use std::collections::HashMap;

use super::types::{Config, SecretConfig, UpstreamConfig};

/// Most replicas of one upstream (a request's tried replicas are one bit each in a `u64`).
pub const MAX_REPLICAS: usize = 64;

/// One upstream as both config forms describe it.
pub struct UpstreamRef<'a> {
    pub name: &'a str,
    /// `upstream` or `upstreams[i]`: the prefix of this upstream's field names.
    pub field: String,
    /// `secret` or `upstreams[i].secret`.
    pub secret_field: String,
    pub cfg: &'a UpstreamConfig,
    pub secret: Option<&'a SecretConfig>,
    pub default: bool,
    /// The single form claims every model (`*`).
    pub models: Vec<String>,
}

impl Config {
    /// Every upstream, in config order (the single form is one upstream named `default`).
    pub fn upstream_list(&self) -> Vec<UpstreamRef<'_>> {
        if let Some(u) = &self.upstream {
            return vec![UpstreamRef {
                name: "default",
                field: "upstream".into(),
                secret_field: "secret".into(),
                cfg: u,
                secret: self.secret.as_ref(),
                default: true,
                models: vec!["*".into()],
            }];
        }
        let only = self.upstreams.len() == 1;
        self.upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| UpstreamRef {
                name: u.name.as_deref().unwrap_or(""),
                field: format!("upstreams[{i}]"),
                secret_field: format!("upstreams[{i}].secret"),
                cfg: u,
                secret: u.secret.as_ref(),
                default: u.default || only,
                models: u.models.clone(),
            })
            .collect()
    }

    /// Both forms at once, neither, names, model claims, the default.
    pub(super) fn validate_routing(&self, err: &mut impl FnMut(&str, String)) {
        let multi = !self.upstreams.is_empty();
        if multi && (self.upstream.is_some() || self.secret.is_some()) {
            err(
                "upstreams",
                "cannot be combined with [upstream]/[secret]: use one form".into(),
            );
            return;
        }
        if !multi {
            if self.upstream.is_none() {
                err("upstream", "the [upstream] section is missing".into());
            }
            if self.secret.is_none() {
                err("secret", "the [secret] section is missing".into());
            }
            if let Some(u) = &self.upstream {
                let set = [
                    ("name", u.name.is_some()),
                    ("models", !u.models.is_empty()),
                    ("default", u.default),
                    ("secret", u.secret.is_some()),
                ];
                for (k, on) in set {
                    if on {
                        err(&format!("upstream.{k}"), "only in [[upstreams]]".into());
                    }
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut claims: HashMap<&str, &str> = HashMap::new();
        let mut default: Option<&str> = None;
        for u in self.upstream_list() {
            let p = &u.field;
            if !u.cfg.url.is_empty() && !u.cfg.urls.is_empty() {
                err(&format!("{p}.urls"), "set url or urls, not both".into());
            } else if u.cfg.replica_urls(p).is_empty() {
                err(&format!("{p}.urls"), "must list at least one URL".into());
            } else if u.cfg.urls.len() > MAX_REPLICAS {
                err(
                    &format!("{p}.urls"),
                    format!("at most {MAX_REPLICAS} replicas"),
                );
            }
            if !multi {
                continue;
            }
            if u.secret.is_none() {
                err(&u.secret_field, "the secret table is missing".into());
            }
            let ok_name = !u.name.is_empty()
                && u.name.len() <= 64
                && u.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !ok_name {
                err(
                    &format!("{p}.name"),
                    "must be 1-64 characters of A-Z a-z 0-9 _ - .".into(),
                );
            } else if !names.insert(u.name) {
                err(&format!("{p}.name"), format!("duplicate name {:?}", u.name));
            }
            for m in &u.cfg.models {
                if let Err(why) = check_pattern(m) {
                    err(&format!("{p}.models"), format!("{m:?}: {why}"));
                } else if let Some(other) = claims.insert(m, u.name) {
                    err(
                        &format!("{p}.models"),
                        format!("{m:?} is already claimed by upstream {other:?}"),
                    );
                }
            }
            if u.default {
                if let Some(d) = default {
                    err(
                        &format!("{p}.default"),
                        format!("upstream {d:?} is the default already"),
                    );
                }
                default = Some(u.name);
            }
        }
        if multi && default.is_none() {
            err(
                "upstreams",
                "one upstream must be `default = true` (it serves requests that name no model)"
                    .into(),
            );
        }
    }
}

/// A model pattern is an exact name or a prefix followed by one trailing `*`.
pub fn check_pattern(p: &str) -> Result<(), &'static str> {
    if p.is_empty() || p.len() > 256 {
        return Err("must be 1-256 characters");
    }
    if p.trim_end_matches('*').contains('*') || p.ends_with("**") {
        return Err("`*` is allowed only once, at the end");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const SECRET: &str = "[upstreams.secret]\nsource = \"file\"\npath = \"/k\"\n";

    fn multi(entries: &[&str]) -> String {
        let mut t = String::from("[[clients]]\nid = \"a\"\nkey_sha256 = \"");
        t.push_str(&"a".repeat(64));
        t.push_str("\"\n");
        t.extend(
            entries
                .iter()
                .map(|e| format!("[[upstreams]]\n{e}\n{SECRET}")),
        );
        t
    }

    fn errors(text: &str) -> Vec<(String, String)> {
        parse(text)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .validate()
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    #[test]
    fn a_valid_multi_config_resolves_in_order_with_one_default() {
        let t = multi(&[
            "name = \"llama\"\nurls = [\"http://a:1\", \"http://b:1\"]\nmodels = [\"meta/*\"]",
            "name = \"embed\"\nurl = \"http://c:1\"\nmodels = [\"nv/e5\"]\ndefault = true",
        ]);
        assert_eq!(errors(&t), vec![]);
        let c = parse(&t).unwrap();
        let l = c.upstream_list();
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].name, l[0].default), ("llama", false));
        assert_eq!((l[1].name, l[1].default), ("embed", true));
        assert_eq!(l[0].cfg.replica_urls("x").len(), 2);
        assert_eq!(l[1].secret_field, "upstreams[1].secret");
    }

    #[test]
    fn each_routing_mistake_names_its_field() {
        let dup = multi(&[
            "name = \"a\"\nurl = \"http://a:1\"\nmodels = [\"m\"]\ndefault = true",
            "name = \"b\"\nurl = \"http://b:1\"\nmodels = [\"m\"]",
        ]);
        let e = errors(&dup);
        assert!(
            e.iter().any(|(f, m)| f == "upstreams[1].models"
                && m.contains("already claimed by upstream \"a\"")),
            "{e:?}"
        );
        let no_default = multi(&[
            "name = \"a\"\nurl = \"http://a:1\"",
            "name = \"b\"\nurl = \"http://b:1\"",
        ]);
        assert!(errors(&no_default)
            .iter()
            .any(|(f, m)| f == "upstreams" && m.contains("default")));
        let empty = multi(&["name = \"a\"\nurls = []"]);
        assert!(errors(&empty).iter().any(|(f, _)| f == "upstreams[0].urls"));
        let both = multi(&["name = \"a\"\nurl = \"http://a:1\"\nurls = [\"http://b:1\"]"]);
        assert!(errors(&both)
            .iter()
            .any(|(f, m)| f == "upstreams[0].urls" && m.contains("not both")));
        let names = multi(&[
            "name = \"a\"\nurl = \"http://a:1\"\ndefault = true",
            "name = \"a\"\nurl = \"http://b:1\"",
        ]);
        assert!(errors(&names)
            .iter()
            .any(|(f, m)| f == "upstreams[1].name" && m.contains("duplicate")));
        let bad = multi(&["name = \"a b\"\nurl = \"http://a:1\"\nmodels = [\"x*y\"]"]);
        let e = errors(&bad);
        assert!(e.iter().any(|(f, _)| f == "upstreams[0].name"), "{e:?}");
        assert!(e.iter().any(|(f, _)| f == "upstreams[0].models"), "{e:?}");
        let bad_url = multi(&["name = \"a\"\nurls = [\"http://a:1\", \"ftp://b\"]"]);
        assert!(errors(&bad_url)
            .iter()
            .any(|(f, _)| f == "upstreams[0].urls[1]"));
        let mixed = format!(
            "[upstream]\nurl = \"http://x:1\"\n{}",
            multi(&["name = \"a\"\nurl = \"http://a:1\""])
        );
        assert!(errors(&mixed)
            .iter()
            .any(|(f, m)| f == "upstreams" && m.contains("one form")));
        let no_secret = multi(&["name = \"a\"\nurl = \"http://a:1\""]).replace(SECRET, "");
        assert!(errors(&no_secret)
            .iter()
            .any(|(f, _)| f == "upstreams[0].secret"));
        let single_only = "[upstream]\nurl = \"http://x:1\"\nmodels = [\"m\"]\n[secret]\nsource = \"file\"\npath = \"/k\"\n";
        assert!(errors(single_only)
            .iter()
            .any(|(f, m)| f == "upstream.models" && m.contains("only in")));
        let bad_vault = multi(&["name = \"a\"\nurl = \"http://a:1\""]).replace(
            SECRET,
            "[upstreams.secret]\nsource = \"vault\"\naddress = \"x\"\npath = \"p\"\nfield = \"f\"\n[upstreams.secret.auth]\nmethod = \"token\"\ntoken_file = \"/t\"\n",
        );
        assert!(
            errors(&bad_vault)
                .iter()
                .any(|(f, _)| f == "upstreams[0].secret.address"),
            "{:?}",
            errors(&bad_vault)
        );
    }

    #[test]
    fn patterns() {
        use super::check_pattern;
        assert!(check_pattern("meta/llama-3.3-*").is_ok());
        assert!(check_pattern("*").is_ok());
        assert!(check_pattern("a").is_ok());
        for bad in ["", "a*b", "*a", "a**"] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }

    /// The validation errors of a single-form config with `upstream` as its `[upstream]` keys.
    fn single(upstream: &str) -> Vec<(String, String)> {
        errors(&format!(
            "[upstream]\n{upstream}\n[secret]\nsource = \"file\"\npath = \"/k\"\n[[clients]]\nid = \"a\"\nkey_sha256 = \"{}\"\n",
            "a".repeat(64)
        ))
    }

    #[test]
    fn tls_settings_are_checked_together_and_name_their_field() {
        let https = "url = \"https://nim:8443\"";
        let ok = format!("{https}\nca_file = \"/ca\"\nclient_cert = \"/c\"\nclient_key = \"/k\"");
        assert_eq!(single(&ok), vec![]);
        assert_eq!(
            single(&format!("{https}\nclient_cert = \"/c\"")),
            vec![(
                "upstream.client_key".into(),
                "must be set together with client_cert".into()
            )]
        );
        assert_eq!(
            single(&format!("{https}\nclient_key = \"/k\"")),
            vec![(
                "upstream.client_cert".into(),
                "must be set together with client_key".into()
            )]
        );
        let e = single(
            "urls = [\"https://a:1\", \"http://b:1\"]\nclient_cert = \"/c\"\nclient_key = \"/k\"",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "upstream.client_cert");
        assert!(e[0].1.contains("needs https://"), "{e:?}");
        // Never implicit: off by default, and on only where it means something.
        let off: crate::config::UpstreamConfig = toml::from_str(https).unwrap();
        assert!(!off.insecure_skip_verify);
        assert_eq!(
            single(&format!("{https}\ninsecure_skip_verify = true")),
            vec![]
        );
        let e = single("url = \"http://nim:8000\"\ninsecure_skip_verify = true");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "upstream.insecure_skip_verify");
        assert!(e[0].1.contains("meaningless for http://"), "{e:?}");
        let e = single(&format!(
            "{https}\ninsecure_skip_verify = true\nca_file = \"/ca\""
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "upstream.insecure_skip_verify");
        assert!(e[0].1.contains("ca_file"), "{e:?}");
    }

    #[test]
    fn each_upstreams_entry_is_checked_under_its_own_name() {
        let t = format!(
            "[[upstreams]]\nname = \"a\"\nurl = \"https://a:1\"\ndefault = true\nclient_key = \"/k\"\n[upstreams.secret]\nsource = \"file\"\npath = \"/k\"\n[[upstreams]]\nname = \"b\"\nurl = \"http://b:1\"\nmodels = [\"m\"]\ninsecure_skip_verify = true\n[upstreams.secret]\nsource = \"file\"\npath = \"/k\"\n[[clients]]\nid = \"a\"\nkey_sha256 = \"{}\"\n",
            "a".repeat(64)
        );
        let fields: Vec<String> = crate::config::parse(&t)
            .unwrap()
            .validate()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "upstreams[0].client_cert",
                "upstreams[1].insecure_skip_verify"
            ]
        );
    }
}
