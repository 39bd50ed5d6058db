//! `[ratelimit] redis_url` (+ password file, CA file) → where and how `resp::Client` connects.

use rustls_pki_types::ServerName;
use std::sync::Arc;
use zeroize::Zeroizing;

use super::resp::Target;
use crate::config::RateLimitConfig;

/// Parse and load everything the Redis backend needs; errors name the field.
pub fn target(cfg: &RateLimitConfig) -> Result<Target, String> {
    let url = cfg
        .redis_url
        .as_deref()
        .ok_or("ratelimit.redis_url: required with backend = \"redis\"")?;
    let (host, port, db, tls) = parse_url(url)?;
    let password = match &cfg.redis_password_file {
        Some(p) => {
            let (bytes, _) = crate::secret::file::read_capped(p)
                .map_err(|e| format!("ratelimit.redis_password_file: {}", e.message))?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| "ratelimit.redis_password_file: not UTF-8".to_string())?;
            let pw = text.trim_end_matches(['\r', '\n']);
            if pw.is_empty() {
                return Err("ratelimit.redis_password_file: the file is empty".into());
            }
            Some(Zeroizing::new(pw.to_string()))
        }
        None => None,
    };
    let tls = if tls {
        let c = crate::tls::client_config(cfg.ca_file.as_deref(), "ratelimit.ca_file")?;
        let name = ServerName::try_from(host.clone())
            .map_err(|_| "ratelimit.redis_url: host is not a valid TLS server name".to_string())?;
        Some((tokio_rustls::TlsConnector::from(Arc::new(c)), name))
    } else {
        None
    };
    Ok(Target {
        host,
        port,
        db,
        tls,
        password,
    })
}

/// `redis[s]://host[:port][/db]` → (host, port, db, tls). Userinfo is refused without repeating it.
pub fn parse_url(url: &str) -> Result<(String, u16, u32, bool), String> {
    let bad = |why: &str| {
        format!("ratelimit.redis_url: {why} (expected redis://host:port/db or rediss://…)")
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("rediss://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("redis://") {
        (false, r)
    } else {
        return Err(bad("the scheme must be redis:// or rediss://"));
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(bad(
            "user:password@ is not accepted; put the password in ratelimit.redis_password_file",
        ));
    }
    let uri: http::uri::Authority = authority.parse().map_err(|_| bad("bad host:port"))?;
    let host = uri.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let db = if path.is_empty() {
        0
    } else {
        path.parse()
            .map_err(|_| bad("the path must be a database number"))?
    };
    Ok((host.to_string(), uri.port_u16().unwrap_or(6379), db, tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_parse_and_userinfo_is_refused_without_repeating_it() {
        assert_eq!(
            parse_url("redis://127.0.0.1:6380/2").unwrap(),
            ("127.0.0.1".into(), 6380, 2, false)
        );
        assert_eq!(
            parse_url("rediss://cache").unwrap(),
            ("cache".into(), 6379, 0, true)
        );
        let e = parse_url("redis://u:hunter2@h:1/0").unwrap_err();
        assert!(
            e.contains("redis_password_file") && !e.contains("hunter2"),
            "{e}"
        );
        assert!(parse_url("http://h:1").is_err());
        assert!(parse_url("redis://h:1/x").is_err());
    }
}
