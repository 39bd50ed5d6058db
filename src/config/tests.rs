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
