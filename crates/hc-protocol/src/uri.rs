//! A deliberately small absolute-URI splitter and the percent-coding flavours the protocol
//! needs (PROTOCOL.md §3.2: verification works on the raw `sr`, so decoding is only used to
//! *read* an audience, never to rebuild one).
//!
//! Wire shape accepted: `scheme://host[:port][/path][?query][#fragment]`, or the same without
//! `scheme://` (some hand-made audiences omit it). IPv6 hosts come in brackets.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Characters .NET's `WebUtility.UrlEncode` leaves alone (PROTOCOL.md §3.2); everything
/// else is `%XX`-escaped with uppercase hex.
const FORM_ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'*')
    .remove(b'(')
    .remove(b')');

/// Characters allowed unescaped in a query value we build (RFC 3986 unreserved).
const QUERY_VALUE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Encodes a whole value the way .NET's `WebUtility.UrlEncode` does (used for `sr`).
pub fn form_encode(value: &str) -> String {
    utf8_percent_encode(value, FORM_ENCODE_SET).to_string()
}

/// Encodes one query-string value (RFC 3986 unreserved characters stay as they are).
pub fn query_encode(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE_SET).to_string()
}

/// Decodes `%XX` escapes only; `+` stays `+` (signatures are base64 and may contain it raw).
pub fn percent_decode(value: &str) -> String {
    percent_decode_str(value).decode_utf8_lossy().into_owned()
}

/// Decodes form-encoded text: `+` means space, then `%XX` escapes.
pub fn form_decode(value: &str) -> String {
    percent_decode(&value.replace('+', " "))
}

/// The parts of an absolute URI, borrowed from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriParts<'a> {
    /// `http`, `sb`, `wss`, ... without `://`; `None` when the input had no scheme.
    pub scheme: Option<&'a str>,
    /// Host as written (brackets kept for IPv6).
    pub host: &'a str,
    /// Explicit port, if any.
    pub port: Option<u16>,
    /// Path including its leading `/`, or empty.
    pub path: &'a str,
    /// Query without `?`, if any.
    pub query: Option<&'a str>,
}

/// Why a URI could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// The host part is empty.
    #[error("uri '{0}' has no host")]
    NoHost(String),
    /// The port is not a number in 0..=65535.
    #[error("uri '{0}' has an invalid port")]
    BadPort(String),
}

/// Splits `input` into scheme, host, port, path and query.
pub fn parse(input: &str) -> Result<UriParts<'_>, UriError> {
    let (scheme, rest) = match input.find("://") {
        Some(i) if is_scheme(&input[..i]) => (Some(&input[..i]), &input[i + 3..]),
        _ => (None, input),
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], &before_query[i..]),
        None => (before_query, ""),
    };
    let (host, port) = split_host_port(authority).ok_or_else(|| UriError::BadPort(input.into()))?;
    if host.is_empty() {
        return Err(UriError::NoHost(input.into()));
    }
    Ok(UriParts {
        scheme,
        host,
        port,
        path,
        query,
    })
}

fn is_scheme(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

/// Splits `host[:port]` or `[v6][:port]`; `None` when a port is present but invalid.
pub fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let port_sep = if authority.starts_with('[') {
        authority
            .find(']')
            .and_then(|end| authority[end..].find(':').map(|i| end + i))
    } else {
        authority.rfind(':')
    };
    match port_sep {
        Some(i) if i + 1 == authority.len() => Some((&authority[..i], None)),
        Some(i) => authority[i + 1..]
            .parse()
            .ok()
            .map(|p| (&authority[..i], Some(p))),
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_full_uri() {
        let u = parse("wss://ns.example:443/$hc/hyco/a?x=1&y=2#f").unwrap();
        assert_eq!(u.scheme, Some("wss"));
        assert_eq!(u.host, "ns.example");
        assert_eq!(u.port, Some(443));
        assert_eq!(u.path, "/$hc/hyco/a");
        assert_eq!(u.query, Some("x=1&y=2"));
    }

    #[test]
    fn splits_without_scheme_and_path() {
        let u = parse("contoso.servicebus.windows.net").unwrap();
        assert_eq!(
            (u.scheme, u.host, u.port, u.path),
            (None, "contoso.servicebus.windows.net", None, "")
        );
    }

    #[test]
    fn ipv6_and_bad_port() {
        let u = parse("http://[::1]:8080/x").unwrap();
        assert_eq!((u.host, u.port), ("[::1]", Some(8080)));
        assert!(matches!(
            parse("http://h:99999/"),
            Err(UriError::BadPort(_))
        ));
        assert!(matches!(parse("http:///x"), Err(UriError::NoHost(_))));
    }

    #[test]
    fn form_encoding_matches_dotnet() {
        assert_eq!(
            form_encode("http://contoso.servicebus.windows.net/hyco/"),
            "http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco%2F"
        );
        assert_eq!(form_decode("a+b%2Fc"), "a b/c");
        assert_eq!(percent_decode("a+b%3D"), "a+b=");
    }
}
