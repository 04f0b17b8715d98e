//! Every parser that sees a request target (path, query, tokens taken from the query, ids,
//! audiences) gets arbitrary UTF-8 and must answer without panicking. The generated text
//! leans towards the shapes that broke before: `sb-hc` prefixes cut by a multibyte
//! character, percent signs, `_G` suffixes, brackets and colons.

use hc_protocol::address::{self, Action};
use hc_protocol::auth::audience_matches;
use hc_protocol::uri;
use hc_protocol::{SasToken, tracking};
use proptest::prelude::*;

/// Pieces that sit next to parser decisions, mixed with arbitrary characters.
fn target_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("sb-hc-".to_owned()),
        Just("sb-hc".to_owned()),
        Just("sb-h".to_owned()),
        Just("SB-HC-ID".to_owned()),
        Just("=".to_owned()),
        Just("&".to_owned()),
        Just("?".to_owned()),
        Just("/".to_owned()),
        Just("/$hc/".to_owned()),
        Just("%".to_owned()),
        Just("%2".to_owned()),
        Just("%C3".to_owned()),
        Just("_G".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(":".to_owned()),
        Just("://".to_owned()),
        Just("é".to_owned()),
        Just("€".to_owned()),
        Just("😀".to_owned()),
        any::<char>().prop_map(String::from),
        ".{0,8}",
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn query_parsers_take_any_text(query in target_text()) {
        let app = address::app_query(&query);
        // Filtering only ever removes whole pairs.
        prop_assert!(app.len() <= query.len());
        for (name, value) in address::query_pairs(&query) {
            prop_assert!(!name.contains('&'));
            prop_assert!(value.is_none_or(|v| !v.contains('&')));
        }
        for name in [address::QUERY_ACTION, address::QUERY_ID, address::QUERY_TOKEN, address::QUERY_STATUS_CODE, "api-version"] {
            let _ = address::query_value(&query, name);
        }
        if let Some(action) = address::query_value(&query, address::QUERY_ACTION) {
            let _ = Action::parse(&action);
        }
        let _ = address::rendezvous_address("wss://h:1", &query, &app, Action::Accept, &query);
    }

    #[test]
    fn app_query_keeps_every_pair_it_does_not_own(query in target_text()) {
        let kept: Vec<&str> = query.split('&').filter(|p| {
            let owned = p.get(..6).is_some_and(|h| h.eq_ignore_ascii_case("sb-hc-")) && p.len() > 6 && p.contains('=');
            !owned
        }).collect();
        prop_assert_eq!(address::app_query(&query), kept.join("&"));
    }

    #[test]
    fn path_parsers_take_any_text(path in target_text()) {
        if let Some(rest) = address::hc_path(&path) {
            prop_assert!(!rest.is_empty() && !rest.ends_with('/'));
        }
        let _ = uri::percent_decode(&path);
        let _ = uri::form_decode(&path);
        let _ = uri::form_encode(&path);
        let _ = uri::query_encode(&path);
    }

    #[test]
    fn uri_and_audience_parsers_take_any_text(text in target_text(), resource in target_text()) {
        if let Ok(parts) = uri::parse(&text) {
            prop_assert!(!parts.host.is_empty());
        }
        let _ = uri::split_host_port(&text);
        let hosts = vec!["localhost".to_owned(), text.clone()];
        let _ = audience_matches(&text, &hosts, &resource);
        let _ = audience_matches(&format!("http://localhost/{text}"), &hosts, &resource);
    }

    #[test]
    fn ids_and_tokens_take_any_text(text in target_text()) {
        let id = tracking::tracking_id(Some(&text), || "generated".into());
        prop_assert!(id.ends_with(tracking::GATEWAY_SUFFIX));
        let _ = tracking::strip_gateway_suffix(&text);
        let _ = SasToken::parse(&text);
        let _ = SasToken::parse(&format!("SharedAccessSignature {text}"));
        let _ = SasToken::parse(&format!("SharedAccessSignature sr={text}&sig={text}&se=1&skn={text}"));
    }
}

/// The inputs of the bug report: a multibyte character right where `sb-hc-` would end.
#[test]
fn multibyte_characters_at_the_prefix_boundary() {
    for query in [
        "sb-hcé=1",
        "sb-h€=1",
        "sb-hc€",
        "é",
        "a=1&sb-hcé=1&sb-hc-id=x",
        "SB-HC-€=1",
    ] {
        let _ = address::app_query(query);
        let _ = address::query_value(query, address::QUERY_ID);
    }
    assert_eq!(
        address::app_query("a=1&sb-hcé=1&sb-hc-id=x"),
        "a=1&sb-hcé=1"
    );
}
