//! Query names, actions and addresses of the WebSocket endpoints (PROTOCOL.md §2.2, §6.2).
//!
//! URL shape: `wss://{ns-host}[:port]/$hc/{hc-path}[/{suffix}][?{app-query}&]sb-hc-action={action}
//! [&sb-hc-id={id}][&sb-hc-token={urlenc-token}]`.

use crate::uri;

/// Path prefix of every WebSocket endpoint.
pub const HC_PATH_PREFIX: &str = "/$hc/";
/// Query name: the action.
pub const QUERY_ACTION: &str = "sb-hc-action";
/// Query name: client tracking id.
pub const QUERY_ID: &str = "sb-hc-id";
/// Query name: URL-encoded SAS token.
pub const QUERY_TOKEN: &str = "sb-hc-token";
/// Query name: reject status (listener reject on the rendezvous address).
pub const QUERY_STATUS_CODE: &str = "sb-hc-statusCode";
/// Query name: reject reason phrase.
pub const QUERY_STATUS_DESCRIPTION: &str = "sb-hc-statusDescription";
/// The unprefixed reject spelling hyco-ws and hyco-websocket use (§6.2).
pub const QUERY_STATUS_CODE_UNPREFIXED: &str = "statusCode";
/// The unprefixed reject reason spelling.
pub const QUERY_STATUS_DESCRIPTION_UNPREFIXED: &str = "statusDescription";
/// Header carrying the SAS token in every SDK (§2.3).
pub const HEADER_SB_AUTHORIZATION: &str = "ServiceBusAuthorization";
/// Header the management GET carries (§10).
pub const HEADER_PROCESS_AT: &str = "X-PROCESS-AT";

/// The `sb-hc-action` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Open a listener control channel.
    Listen,
    /// Open a relayed connection as a sender (also what a missing action means).
    Connect,
    /// Join a WebSocket rendezvous announced by `accept`.
    Accept,
    /// Join an HTTP request rendezvous announced by `request`.
    Request,
}

impl Action {
    /// Wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Listen => "listen",
            Action::Connect => "connect",
            Action::Accept => "accept",
            Action::Request => "request",
        }
    }

    /// Parses wire text (case-insensitive); `None` for anything else.
    pub fn parse(text: &str) -> Option<Action> {
        [
            Action::Listen,
            Action::Connect,
            Action::Accept,
            Action::Request,
        ]
        .into_iter()
        .find(|a| a.as_str().eq_ignore_ascii_case(text))
    }
}

/// What follows `/${name}` (or its percent-encoded form `/%24{name}`) in a request path: ""
/// or a path starting with `/`; `None` for other paths (`/${name}x` included). The relay's
/// own endpoints (`/$hc/`, `/$status`, `/$faults`) live under such names.
pub fn dollar_path<'a>(request_path: &'a str, name: &str) -> Option<&'a str> {
    let rest = request_path
        .strip_prefix("/$")
        .or_else(|| request_path.strip_prefix("/%24"))?
        .strip_prefix(name)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// The hybrid connection path (plus suffix) of a `/$hc/...` request path, without the prefix
/// and without trailing slashes; `None` for other paths.
pub fn hc_path(request_path: &str) -> Option<&str> {
    let rest = dollar_path(request_path, "hc")?
        .strip_prefix('/')?
        .trim_end_matches('/');
    (!rest.is_empty()).then_some(rest)
}

/// Raw `(key, value)` pairs of a query; `value` is `None` for a pair without `=`.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        })
}

/// The decoded value of the first pair named `name` (exact match), if present.
pub fn query_value(query: &str, name: &str) -> Option<String> {
    query_pairs(query)
        .find(|(k, v)| *k == name && v.is_some())
        .and_then(|(_, v)| v.map(uri::form_decode))
}

/// The application's part of a query: every `sb-hc-*` pair that has an `=` removed, the rest
/// (duplicates, empty pairs, odd characters, `sb-hc-x` without `=`) kept unchanged (§2.2).
pub fn app_query(query: &str) -> String {
    query
        .split('&')
        .filter(|p| !is_relay_pair(p))
        .collect::<Vec<_>>()
        .join("&")
}

/// A pair the relay owns: its name starts with `sb-hc-` (any case) and it has an `=`. Compares
/// bytes, so a multibyte character anywhere in the pair is just "not a match".
fn is_relay_pair(pair: &str) -> bool {
    let prefix = b"sb-hc-";
    pair.len() > prefix.len()
        && pair.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix)
        && pair.contains('=')
}

/// Appends `name=value` (value query-encoded) to `url`, adding `?` or `&` as needed.
pub fn append_query(url: &mut String, name: &str, value: &str) {
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str(name);
    url.push('=');
    url.push_str(&uri::query_encode(value));
}

/// A rendezvous address: `{base}/$hc/{hc_path}?{app_query}&sb-hc-action={action}&sb-hc-id={id}`.
/// `base` is `wss://host[:port]`.
pub fn rendezvous_address(
    base: &str,
    hc_path: &str,
    app_query: &str,
    action: Action,
    id: &str,
) -> String {
    let mut url = format!("{base}{HC_PATH_PREFIX}{hc_path}");
    let app_query = app_query.trim_matches('&');
    if !app_query.is_empty() {
        url.push('?');
        url.push_str(app_query);
    }
    append_query(&mut url, QUERY_ACTION, action.as_str());
    append_query(&mut url, QUERY_ID, id);
    url
}

/// A listener or sender URL for `hc_path` at `host[:port]`: `wss://{host}/$hc/{hc}?sb-hc-action=..&sb-hc-id=..`.
pub fn endpoint_url(
    scheme: &str,
    authority: &str,
    hc_path: &str,
    action: Action,
    id: &str,
) -> String {
    rendezvous_address(&format!("{scheme}://{authority}"), hc_path, "", action, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions() {
        assert_eq!(Action::parse("LISTEN"), Some(Action::Listen));
        assert_eq!(Action::parse("bogus"), None);
    }

    #[test]
    fn hc_paths() {
        assert_eq!(hc_path("/$hc/hyco"), Some("hyco"));
        assert_eq!(hc_path("/$hc/a/b/c/"), Some("a/b/c"));
        assert_eq!(hc_path("/%24hc/x"), Some("x"));
        assert_eq!(hc_path("/$hc/"), None);
        assert_eq!(hc_path("/hyco"), None);
    }

    /// The cases of dotnet-test `HybridRequestTests.QueryString` (§2.2).
    #[test]
    fn app_query_filtering() {
        assert_eq!(
            app_query("a=1&sb-hc-action=connect&a=2&sb-hc-token=x%20y"),
            "a=1&a=2"
        );
        assert_eq!(app_query("sb-hc-undefined"), "sb-hc-undefined");
        assert_eq!(app_query("&&&"), "&&&");
        assert_eq!(app_query("%2B"), "%2B");
        assert_eq!(
            app_query("+&api-version=abc&SB-HC-ID=1"),
            "+&api-version=abc"
        );
    }

    #[test]
    fn query_values_decode() {
        let q = "sb-hc-action=accept&sb-hc-statusDescription=Rejected+by%20user&x";
        assert_eq!(query_value(q, QUERY_ACTION).as_deref(), Some("accept"));
        assert_eq!(
            query_value(q, QUERY_STATUS_DESCRIPTION).as_deref(),
            Some("Rejected by user")
        );
        assert_eq!(query_value(q, "x"), None);
    }

    #[test]
    fn addresses() {
        let a = rendezvous_address(
            "wss://localhost:9443",
            "hyco/sub",
            "x=1",
            Action::Accept,
            "abc_G0",
        );
        assert_eq!(
            a,
            "wss://localhost:9443/$hc/hyco/sub?x=1&sb-hc-action=accept&sb-hc-id=abc_G0"
        );
        let b = endpoint_url("wss", "h", "hc", Action::Listen, "id");
        assert_eq!(b, "wss://h/$hc/hc?sb-hc-action=listen&sb-hc-id=id");
    }
}
