//! Hints for the commonest mix-up of address forms: a listener takes `ip:port` (no scheme, no
//! host name), a URL setting takes `scheme://host:port`. Each returns `""` or a sentence to
//! append to the error; none repeats a value that holds `@` (it may carry a credential).

/// For a `*.listen` value that is not an `ip:port`.
pub fn listen(v: &str) -> String {
    if v.contains('@') {
        return String::new();
    }
    if let Some((_, rest)) = v.split_once("://") {
        return format!(
            " (a listen address takes no scheme: write \"{}\")",
            rest.trim_end_matches('/')
        );
    }
    match v.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => format!(
            " (an IP address is expected, not a host name: \"127.0.0.1:{port}\" for loopback only, \"0.0.0.0:{port}\" for all interfaces)"
        ),
        _ => " (expected ip:port, e.g. \"127.0.0.1:8080\")".into(),
    }
}

/// For a URL setting whose value has no `http://` or `https://`.
pub fn url(v: &str) -> String {
    if v.contains('@') || v.contains("://") || v.is_empty() {
        return String::new();
    }
    format!(" (a URL is expected, not host:port: write \"http://{v}\" or \"https://{v}\")")
}

#[cfg(test)]
mod tests {
    #[test]
    fn hints_name_the_expected_form() {
        assert!(super::listen("localhost:9090").contains("\"127.0.0.1:9090\""));
        assert!(super::listen("http://0.0.0.0:8080/").contains("write \"0.0.0.0:8080\""));
        assert!(super::listen("8080").contains("expected ip:port"));
        assert!(super::url("localhost:8000").contains("\"http://localhost:8000\""));
        assert_eq!(super::url("https://nim:8000"), "");
        assert_eq!(super::url("u:p@nim:8000"), "", "never repeats a credential");
    }
}
