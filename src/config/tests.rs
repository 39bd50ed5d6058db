//! Unit tests of config parsing, defaults, the env overlay and validation messages.

use super::*;

const DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000001";

fn base() -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:8080"
[admin]
listen = "127.0.0.1:9090"
[upstream]
url = "http://127.0.0.1:8000"
[secret]
source = "file"
path = "/secrets/nim-api-key"
[[clients]]
id = "team-a"
key_sha256 = "{DIGEST}"
[audit]
path = "/var/log/nimgate/audit.jsonl"
"#
    )
}

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(c) => c.validate(),
        Err(e) => e,
    }
}

#[test]
fn issue_contract_parses_with_defaults() {
    let c = parse(&base()).unwrap();
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    assert_eq!(c.upstream.as_ref().unwrap().auth_header, "Authorization");
    assert_eq!(c.upstream.as_ref().unwrap().auth_value, "Bearer {key}");
    assert_eq!(c.audit.fsync, FsyncPolicy::Interval);
    assert_eq!(c.server.route_prefixes, vec!["/v1/"]);
}

#[test]
fn unknown_keys_are_errors_naming_the_field() {
    let e = errors(&base().replace("[admin]", "[admin]\nlisen = \"x\""));
    assert_eq!(e.len(), 1);
    assert!(e[0].field.starts_with("admin.lisen"), "{e:?}");
    assert!(e[0].message.contains("unknown field"), "{e:?}");
    let e = errors(&base().replace("source = \"file\"", "source = \"file\"\ntoken = \"x\""));
    assert!(e[0].message.contains("unknown field"), "{e:?}");
    let e = errors(&base().replace("source = \"file\"", "source = \"s3\""));
    assert!(e[0].message.contains("unknown variant"), "{e:?}");
}

#[test]
fn validation_names_each_field() {
    let bad = base()
        .replace("http://127.0.0.1:8000", "ftp://x/path")
        .replace(DIGEST, "abc")
        .replace("[audit]", "[upstream2]\n[audit]");
    let e = errors(&bad);
    assert!(!e.is_empty());
    let bad = base()
        .replace("http://127.0.0.1:8000", "ftp://x/path")
        .replace(DIGEST, "abc");
    let e = errors(&bad);
    let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains(&"upstream.url"), "{fields:?}");
    assert!(fields.contains(&"clients[0].key_sha256"), "{fields:?}");
    let e = errors(&base().replace("[upstream]", "[upstream]\nauth_value = \"Bearer\""));
    assert_eq!(e[0].field, "upstream.auth_value");
    let e = errors(&base().replace("[upstream]", "[upstream]\nauth_header = \"Connection\""));
    assert_eq!(e[0].field, "upstream.auth_header");
    let e = errors(&base().replace("127.0.0.1:9090", "127.0.0.1:8080"));
    assert_eq!(e[0].field, "admin.listen");
    let dup = base() + &format!("[[clients]]\nid = \"team-a\"\nkey_sha256 = \"{DIGEST}\"\n");
    let fields: Vec<_> = errors(&dup).into_iter().map(|e| e.field).collect();
    assert_eq!(fields, vec!["clients[1].id", "clients[1].key_sha256"]);
}

#[test]
fn durations_are_human_strings() {
    let c = parse(&base().replace("[upstream]", "[upstream]\nresponse_timeout = \"90s\"")).unwrap();
    assert_eq!(
        c.upstream.as_ref().unwrap().response_timeout,
        std::time::Duration::from_secs(90)
    );
    let e = errors(&base().replace("[upstream]", "[upstream]\nresponse_timeout = \"soon\""));
    assert!(e[0].field.starts_with("upstream.response_timeout"), "{e:?}");
}

#[test]
fn env_overlay_changes_only_non_secrets() {
    let mut c = parse(&base()).unwrap();
    let env = |k: &str| match k {
        "NIMGATE_SERVER_LISTEN" => Some("0.0.0.0:8443".to_string()),
        "NIMGATE_UPSTREAM_URL" => Some("http://nim:8000".to_string()),
        _ => None,
    };
    env::apply_overlay(&mut c, env).unwrap();
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8443");
    assert_eq!(c.upstream.as_ref().unwrap().url, "http://nim:8000");
    let e = env::apply_overlay(&mut c, |k| {
        (k == "NIMGATE_ADMIN_LISTEN").then(|| "nope".into())
    })
    .unwrap_err();
    assert!(e[0].field.contains("NIMGATE_ADMIN_LISTEN"));
}

#[test]
fn vault_contract_parses() {
    let v = base().replace(
        "[secret]\nsource = \"file\"\npath = \"/secrets/nim-api-key\"",
        r#"[secret]
source = "vault"
address = "https://vault.example:8200"
mount = "secret"
path = "nim/prod/model-a"
kv_version = 2
field = "api_key"
refresh = "60s"
max_staleness = "15m"
[secret.auth]
method = "approle"
role_id_file = "/vault/approle/role-id"
secret_id_file = "/vault/approle/secret-id""#,
    );
    let c = parse(&v).unwrap();
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    match c.secret.as_ref().unwrap() {
        SecretConfig::Vault(vc) => {
            assert!(matches!(&vc.auth, VaultAuthConfig::Approle(a) if a.mount == "approle"));
            assert_eq!(vc.max_staleness, std::time::Duration::from_secs(900));
        }
        SecretConfig::File(_) => panic!("not vault"),
    }
    let e = errors(&v.replace("kv_version = 2", "kv_version = 3"));
    assert_eq!(e[0].field, "secret.kv_version");
    let e = errors(&v.replace("role_id_file", "role_id"));
    assert!(
        e[0].message.contains("unknown field") || e[0].message.contains("missing field"),
        "{e:?}"
    );
}

#[test]
fn vault_jwt_agent_and_wrapped_approle_parse_and_validate() {
    let vault = |auth: &str| {
        base().replace(
            "[secret]\nsource = \"file\"\npath = \"/secrets/nim-api-key\"",
            &format!("[secret]\nsource = \"vault\"\naddress = \"http://127.0.0.1:8100\"\npath = \"nim\"\nfield = \"k\"\n[secret.auth]\n{auth}"),
        )
    };
    let auth_of = |text: &str| match parse(text).unwrap().secret.unwrap() {
        SecretConfig::Vault(vc) => vc.auth,
        SecretConfig::File(_) => panic!("not vault"),
    };
    let jwt = vault("method = \"jwt\"\nrole = \"nimgate\"\njwt_file = \"/run/jwt\"");
    assert!(parse(&jwt).unwrap().validate().is_empty());
    assert!(matches!(auth_of(&jwt), VaultAuthConfig::Jwt(j) if j.mount == "jwt"));
    let e = errors(&jwt.replace("role = \"nimgate\"", "role = \"\""));
    assert_eq!(e[0].field, "secret.auth.role", "{e:?}");
    let e = errors(&jwt.replace("jwt_file = \"/run/jwt\"", ""));
    assert!(e[0].message.contains("jwt_file"), "{e:?}");
    let agent = vault("method = \"agent\"");
    assert!(parse(&agent).unwrap().validate().is_empty());
    assert!(matches!(auth_of(&agent), VaultAuthConfig::Agent(_)));
    let e = errors(&vault("method = \"agent\"\ntoken_file = \"/t\""));
    assert!(e[0].message.contains("unknown field"), "{e:?}");
    let wrapped = vault(
        "method = \"approle\"\nrole_id_file = \"/r\"\nsecret_id_file = \"/w\"\nsecret_id_wrapped = true",
    );
    assert!(matches!(auth_of(&wrapped), VaultAuthConfig::Approle(a) if a.secret_id_wrapped));
    let plain = wrapped.replace("\nsecret_id_wrapped = true", "");
    assert!(matches!(auth_of(&plain), VaultAuthConfig::Approle(a) if !a.secret_id_wrapped));
}

#[test]
fn userinfo_in_urls_is_refused_without_repeating_it() {
    let text = base().replace(
        "url = \"http://127.0.0.1:8000\"",
        "url = \"http://admin:hunter2@127.0.0.1:8000\"",
    );
    let errs = errors(&text);
    assert!(errs.iter().any(|e| e.field == "upstream.url"), "{errs:?}");
    assert!(!format!("{errs:?}").contains("hunter2"));
    let vault = base().replace(
        "[secret]\nsource = \"file\"\npath = \"/secrets/nim-api-key\"",
        "[secret]\nsource = \"vault\"\naddress = \"https://u:s3cr3t@vault:8200\"\npath = \"nim\"\nfield = \"k\"\n[secret.auth]\nmethod = \"token\"\ntoken_file = \"/t\"",
    );
    let errs = errors(&vault);
    assert!(errs.iter().any(|e| e.field == "secret.address"), "{errs:?}");
    assert!(!format!("{errs:?}").contains("s3cr3t"));
}

#[test]
fn a_key_file_given_as_config_is_never_echoed() {
    for text in [
        "nvapi-AbCdEf0123456789xyz\n",
        "nvapi-AbCdEf0123456789xyz",
        "{\"api_key\": \"nvapi-AbCdEf0123456789xyz\"}\n",
        "[server]\nnvapi-AbCdEf0123456789xyz\n",
    ] {
        let errs = errors(text);
        assert!(!errs.is_empty());
        let shown = format!(
            "{errs:?} {}",
            errs.iter().map(ToString::to_string).collect::<String>()
        );
        assert!(!shown.contains("AbCdEf0123"), "{text:?} → {shown}");
    }
}

#[test]
fn errors_inside_secret_name_their_own_section_and_a_missing_section_says_so() {
    let text = base().replace(
        "[secret]\nsource = \"file\"\npath = \"/secrets/nim-api-key\"",
        "[secret]\nsource = \"vault\"\naddress = \"http://v:8200\"\npath = \"p\"\nfield = \"f\"\n[secret.auth]\nmethod = \"approle\"\nrole_id_file = \"/r\"",
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].field.starts_with("secret.auth (line 13)"),
        "{errs:?}"
    );
    assert!(errs[0].message.contains("secret_id_file"));
    let errs = errors(&text.replace("method = \"approle\"", "method = \"aproll\""));
    assert!(errs[0].field.starts_with("secret.auth"), "{errs:?}");
    let errs = errors(&text.replace("field = \"f\"", "field = \"f\"\nbogus = 1"));
    assert!(errs[0].field.starts_with("secret (line"), "{errs:?}");
    let no_secret = base().replace(
        "[secret]\nsource = \"file\"\npath = \"/secrets/nim-api-key\"\n",
        "",
    );
    let errs = errors(&no_secret);
    assert_eq!(errs[0].field, "secret", "{errs:?}");
    assert_eq!(errs[0].message, "the [secret] section is missing");
}

#[test]
fn an_error_from_an_env_override_names_the_variable() {
    let mut c = parse(&base()).unwrap();
    let env = |k: &str| (k == "NIMGATE_UPSTREAM_URL").then(|| "nim:8000".to_string());
    env::apply_overlay(&mut c, env).unwrap();
    let mut e = c.validate();
    env::name_overrides(&mut e, env);
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    assert!(
        fields.contains(&"upstream.url (set by NIMGATE_UPSTREAM_URL)"),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.message.contains("write \"http://nim:8000\"")),
        "host:port where a URL is expected gets a hint: {e:?}"
    );
    // The same error from the file names no variable.
    let mut e = errors(&base().replace("http://127.0.0.1:8000", "nim:8000"));
    env::name_overrides(&mut e, |_| None);
    assert!(e.iter().all(|e| e.field == "upstream.url"), "{e:?}");
    // A bad listen override names its variable and gets the ip:port hint.
    let e = env::apply_overlay(&mut c, |k| {
        (k == "NIMGATE_SERVER_LISTEN").then(|| "localhost:8080".into())
    })
    .unwrap_err();
    assert_eq!(e[0].field, "server.listen (set by NIMGATE_SERVER_LISTEN)");
    assert!(e[0].message.contains("\"127.0.0.1:8080\""), "{e:?}");
}

#[test]
fn address_forms_get_hints() {
    let e = errors(&base().replace("listen = \"127.0.0.1:9090\"", "listen = \"localhost:9090\""));
    assert!(e[0].field.starts_with("admin.listen"), "{e:?}");
    assert!(
        e[0].message.contains("\"127.0.0.1:9090\"") && e[0].message.contains("0.0.0.0:9090"),
        "{e:?}"
    );
    let e = errors(&base().replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"http://0.0.0.0:8080\"",
    ));
    assert!(e[0].field.starts_with("server.listen"), "{e:?}");
    assert!(
        e[0].message.contains("no scheme: write \"0.0.0.0:8080\""),
        "{e:?}"
    );
    let vault = base().replace(
        "[secret]\nsource = \"file\"\npath = \"/secrets/nim-api-key\"",
        "[secret]\nsource = \"vault\"\naddress = \"vault:8200\"\npath = \"nim\"\nfield = \"api_key\"\n[secret.auth]\nmethod = \"agent\"",
    );
    let e = errors(&vault);
    let addr: Vec<_> = e.iter().filter(|e| e.field == "secret.address").collect();
    assert!(
        addr.len() == 1 && addr[0].message.contains("\"https://vault:8200\""),
        "{e:?}"
    );
}

#[test]
fn durations_have_bounds_naming_the_field() {
    let with = |section: &str, line: &str| {
        let b = base();
        if b.contains(&format!("[{section}]")) {
            errors(&b.replace(&format!("[{section}]"), &format!("[{section}]\n{line}")))
        } else {
            errors(&format!("{b}\n[{section}]\n{line}\n"))
        }
    };
    let only = |e: Vec<ConfigError>| -> (String, String) {
        assert_eq!(e.len(), 1, "{e:?}");
        (e[0].field.clone(), e[0].message.clone())
    };
    let (f, m) = only(with("upstream", "connect_timeout = \"0s\""));
    assert_eq!(
        (f.as_str(), m.as_str()),
        ("upstream.connect_timeout", "must be greater than 0")
    );
    let (f, m) = only(with("upstream", "response_timeout = \"3days\""));
    assert_eq!(f, "upstream.response_timeout");
    assert!(m.contains("too long: at most 1day"), "{m}");
    let (f, m) = only(with("limits", "header_read_timeout = \"1h\""));
    assert_eq!(f, "limits.header_read_timeout");
    assert!(m.contains("at most 5m"), "{m}");
    let (f, _) = only(with("audit", "max_wait = \"0s\""));
    assert_eq!(f, "audit.max_wait");
    let (f, m) = only(with("server", "drain_delay = \"40s\""));
    assert_eq!(f, "server.drain_delay");
    assert!(m.contains("longer than server.shutdown_grace (30s)"), "{m}");
    assert!(with("server", "drain_delay = \"5s\"").is_empty());
    let (f, m) = only(with("server", "tls_reload_interval = \"10ms\""));
    assert_eq!(f, "server.tls_reload_interval");
    assert!(m.contains("too short: at least 100ms"), "{m}");
    let (f, _) = only(with("server", "tls_reload_interval = \"2h\""));
    assert_eq!(f, "server.tls_reload_interval");
    let (f, m) = only(with("secret", "poll_interval = \"1ms\""));
    assert_eq!(f, "secret.poll_interval");
    assert!(m.contains("too short: at least 10ms"), "{m}");
    // Vault: not more than once a second, except a Vault on loopback (dev server, local agent).
    let vault = |addr: &str, refresh: &str| {
        errors(&base().replace(
            "[secret]\nsource = \"file\"\npath = \"/secrets/nim-api-key\"",
            &format!("[secret]\nsource = \"vault\"\naddress = \"{addr}\"\npath = \"nim\"\nfield = \"api_key\"\nrefresh = \"{refresh}\"\n[secret.auth]\nmethod = \"agent\""),
        ))
    };
    let (f, m) = only(vault("https://vault.example:8200", "200ms"));
    assert_eq!(f, "secret.refresh");
    assert!(m.contains("too short: at least 1s"), "{m}");
    assert!(vault("https://vault.example:8200", "1s").is_empty());
    assert!(vault("http://127.0.0.1:8200", "200ms").is_empty());
    let (f, _) = only(vault("http://127.0.0.1:8200", "10ms"));
    assert_eq!(f, "secret.refresh");
}

#[test]
fn trusted_proxies_must_be_cidrs_or_addresses() {
    let e = errors(&base().replace(
        "[server]",
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\", \"10.0.0.0/40\"]",
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].field, "server.trusted_proxies");
    assert!(
        e[0].message.contains("\"10.0.0.0/40\" is not a CIDR"),
        "{e:?}"
    );
}

#[test]
fn start_up_errors_name_the_variable_behind_them() {
    let env = |k: &str| (k == "NIMGATE_AUDIT_PATH").then(|| "/x".to_string());
    assert_eq!(
        env::override_behind("audit.path /x: permission denied", env),
        Some("NIMGATE_AUDIT_PATH")
    );
    assert_eq!(
        env::override_behind("audit.path /x: denied", |_| None),
        None
    );
    assert_eq!(env::override_behind("audit.pathology: x", env), None);
    assert_eq!(
        env::override_behind("server.listen 1.2.3.4:80: in use", env),
        None
    );
}
