//! Push endpoint URLs: `http://host[:port][/path][?query]` (and `https://`).
//!
//! Deliberately strict: ASCII only, no whitespace or control characters
//! (percent-encode them), no credentials, fragments dropped.

use std::fmt;

/// Longest endpoint URL (same as the protocol's `URL_BYTES_MAX`: CMQ SDKs
/// refuse URLs over 2048 characters).
pub const URL_BYTES_MAX: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Where connections go: the unit of connection reuse and of the
/// per-endpoint concurrency bound.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// Lowercase; an IPv6 literal without its brackets.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A parsed push URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub endpoint: Endpoint,
    /// Value of the `Host` header: the host as written, with the port when it is not the default.
    pub host_header: String,
    /// Request target: path and query, at least `/`.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("URL longer than {URL_BYTES_MAX} bytes")]
    TooLong,
    #[error("URL must start with http:// or https://")]
    Scheme,
    #[error("URL contains whitespace, control or non-ASCII characters (percent-encode them)")]
    Characters,
    #[error("credentials in URLs are not supported")]
    UserInfo,
    #[error("URL has no valid host")]
    Host,
    #[error("URL has an invalid port")]
    Port,
}

pub fn parse(url: &str) -> Result<Target, UrlError> {
    if url.len() > URL_BYTES_MAX {
        return Err(UrlError::TooLong);
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(UrlError::Characters);
    }
    let (scheme, rest) = if let Some(r) = strip_prefix_ci(url, "http://") {
        (Scheme::Http, r)
    } else if let Some(r) = strip_prefix_ci(url, "https://") {
        (Scheme::Https, r)
    } else {
        return Err(UrlError::Scheme);
    };
    let rest = rest.split('#').next().unwrap_or("");
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(auth_end);
    if authority.contains('@') {
        return Err(UrlError::UserInfo);
    }
    let (host, port_str) = if let Some(v6) = authority.strip_prefix('[') {
        let close = v6.find(']').ok_or(UrlError::Host)?;
        let host = &v6[..close];
        if host.is_empty() || !host.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return Err(UrlError::Host);
        }
        let after = &v6[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(UrlError::Host),
        };
        (host, port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty()
            || host.starts_with(['.', '-'])
            || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(UrlError::Host);
        }
        (host, port)
    };
    let port = match port_str {
        None | Some("") => scheme.default_port(),
        Some(p) => {
            if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UrlError::Port);
            }
            match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(UrlError::Port),
                Ok(n) => n,
            }
        }
    };
    let bracketed = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    let host_header = if port == scheme.default_port() { bracketed } else { format!("{bracketed}:{port}") };
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    Ok(Target { endpoint: Endpoint { scheme, host: host.to_ascii_lowercase(), port }, host_header, path })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> (Scheme, String, u16, String, String) {
        let t = parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        (t.endpoint.scheme, t.endpoint.host, t.endpoint.port, t.host_header, t.path)
    }

    #[test]
    fn accepted() {
        let s = |x: &str| x.to_string();
        assert_eq!(ok("http://example.com"), (Scheme::Http, s("example.com"), 80, s("example.com"), s("/")));
        assert_eq!(
            ok("HTTP://Example.com:8080/a/b?x=1&y=%20#frag"),
            (Scheme::Http, s("example.com"), 8080, s("Example.com:8080"), s("/a/b?x=1&y=%20"))
        );
        assert_eq!(ok("https://h/p"), (Scheme::Https, s("h"), 443, s("h"), s("/p")));
        assert_eq!(ok("http://h:80/p"), (Scheme::Http, s("h"), 80, s("h"), s("/p")));
        assert_eq!(ok("http://h?q"), (Scheme::Http, s("h"), 80, s("h"), s("/?q")));
        assert_eq!(ok("http://127.0.0.1:9/"), (Scheme::Http, s("127.0.0.1"), 9, s("127.0.0.1:9"), s("/")));
        assert_eq!(ok("http://[::1]:9/x"), (Scheme::Http, s("::1"), 9, s("[::1]:9"), s("/x")));
        assert_eq!(ok("http://[::1]"), (Scheme::Http, s("::1"), 80, s("[::1]"), s("/")));
        assert_eq!(ok("http://h:/"), (Scheme::Http, s("h"), 80, s("h"), s("/")));
    }

    #[test]
    fn rejected() {
        for (url, err) in [
            ("ftp://h/", UrlError::Scheme),
            ("h/", UrlError::Scheme),
            ("http://", UrlError::Host),
            ("http:///p", UrlError::Host),
            ("http://h p/", UrlError::Characters),
            ("http://h/p q", UrlError::Characters),
            ("http://h/\r\nX: y", UrlError::Characters),
            ("http://h/é", UrlError::Characters),
            ("http://u:p@h/", UrlError::UserInfo),
            ("http://h:0/", UrlError::Port),
            ("http://h:65536/", UrlError::Port),
            ("http://h:x/", UrlError::Port),
            ("http://h:1:2/", UrlError::Host),
            ("http://[::1/", UrlError::Host),
            ("http://[::1]x/", UrlError::Host),
            ("http://[zz]/", UrlError::Host),
            ("http://-h/", UrlError::Host),
            ("http://h%41/", UrlError::Host),
        ] {
            assert_eq!(parse(url), Err(err), "{url}");
        }
        let long = format!("http://h/{}", "a".repeat(URL_BYTES_MAX));
        assert_eq!(parse(&long), Err(UrlError::TooLong));
        let edge = format!("http://h/{}", "a".repeat(URL_BYTES_MAX - 9));
        assert!(parse(&edge).is_ok());
    }

    #[test]
    fn display() {
        assert_eq!(parse("http://H:81/").unwrap().endpoint.to_string(), "h:81");
        assert_eq!(parse("http://[::1]/").unwrap().endpoint.to_string(), "[::1]:80");
    }
}
