//! Shared Access Signature keys and tokens (PROTOCOL.md §3.1, §3.2).
//!
//! Token wire format:
//! `SharedAccessSignature sr=<urlenc(uri)>&sig=<urlenc(base64(hmac))>&se=<unix secs>&skn=<name>`
//! with the pairs in any order. The signature is HMAC-SHA256 keyed with the key *text* (its
//! UTF-8 bytes, never base64-decoded) over `<sr exactly as in the token> + "\n" + <se>`.
//!
//! Keys and tokens are secrets: their `Debug` output is redacted, and they have no `Display`.
//! Checking a token against rules, audiences and rights lives in [`crate::auth`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

use crate::limits::{MAX_KEY_LEN, MAX_KEY_NAME_LEN};
use crate::uri;

type HmacSha256 = Hmac<Sha256>;

/// The scheme word that opens every SAS token (compared case-insensitively when parsing).
pub const TOKEN_PREFIX: &str = "SharedAccessSignature";

/// A shared access key: the text shown in the portal, used as UTF-8 bytes for signing.
#[derive(Clone, PartialEq, Eq)]
pub struct SasKey(String);

impl SasKey {
    /// Wraps key text, refusing an empty key or one longer than the SDKs allow (256).
    pub fn new(text: impl Into<String>) -> Result<Self, TokenError> {
        let text = text.into();
        if text.is_empty() || text.len() > MAX_KEY_LEN {
            return Err(TokenError::BadKeyLength(text.len()));
        }
        Ok(SasKey(text))
    }

    /// A key as Azure makes them: 32 random bytes, base64-encoded (44 characters).
    pub fn from_random_bytes(bytes: [u8; 32]) -> Self {
        SasKey(BASE64.encode(bytes))
    }

    /// The key text. Call sites that use this write a secret somewhere on purpose.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `base64(HMAC-SHA256(key_text, sr_raw + "\n" + se))` (PROTOCOL.md §3.2).
    pub fn sign(&self, sr_raw: &str, expiry: u64) -> String {
        BASE64.encode(self.mac(sr_raw, expiry).finalize().into_bytes())
    }

    /// Constant-time check of a decoded signature against this key.
    pub fn verifies(&self, sr_raw: &str, expiry: u64, signature_b64: &str) -> bool {
        match BASE64.decode(signature_b64.trim()) {
            Ok(sig) => self.mac(sr_raw, expiry).verify_slice(&sig).is_ok(),
            Err(_) => false,
        }
    }

    fn mac(&self, sr_raw: &str, expiry: u64) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac =
            HmacSha256::new_from_slice(self.0.as_bytes()).expect("hmac takes any key length");
        mac.update(sr_raw.as_bytes());
        mac.update(b"\n");
        mac.update(expiry.to_string().as_bytes());
        mac
    }
}

impl fmt::Debug for SasKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SasKey(<redacted>)")
    }
}

/// A parsed SAS token. `resource_raw` keeps the `sr` text exactly as it travelled.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    resource_raw: String,
    signature: String,
    expiry: u64,
    key_name: String,
}

/// Why a token or key was refused before any signature check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The text does not start with `SharedAccessSignature `.
    #[error("token does not start with 'SharedAccessSignature '")]
    MissingPrefix,
    /// A required field (`sr`, `sig`, `se`, `skn`) is absent.
    #[error("token has no '{0}' field")]
    MissingField(&'static str),
    /// A field appears twice.
    #[error("token has the '{0}' field twice")]
    DuplicateField(&'static str),
    /// `se` is not an integer number of Unix seconds.
    #[error("token expiry 'se' is not a number of seconds: '{0}'")]
    BadExpiry(String),
    /// The key name is empty or longer than 256 characters.
    #[error("token key name 'skn' must be 1 to 256 characters, got {0}")]
    BadKeyNameLength(usize),
    /// A key is empty or longer than 256 characters.
    #[error("shared access key must be 1 to 256 characters, got {0}")]
    BadKeyLength(usize),
}

impl SasToken {
    /// Builds a token for `resource_uri` the way the .NET SDK does: `sr` is the form-encoded
    /// URI, `se` the given expiry in Unix seconds.
    pub fn create(resource_uri: &str, key_name: &str, key: &SasKey, expiry: u64) -> Self {
        let resource_raw = uri::form_encode(resource_uri);
        let signature = key.sign(&resource_raw, expiry);
        SasToken {
            resource_raw,
            signature,
            expiry,
            key_name: key_name.to_owned(),
        }
    }

    /// Builds a token over an `sr` text that is already encoded, exactly as given. Used to
    /// reproduce other clients' encodings (PROTOCOL.md §3.3).
    pub fn create_raw(resource_raw: &str, key_name: &str, key: &SasKey, expiry: u64) -> Self {
        let signature = key.sign(resource_raw, expiry);
        SasToken {
            resource_raw: resource_raw.to_owned(),
            signature,
            expiry,
            key_name: key_name.to_owned(),
        }
    }

    /// Parses `SharedAccessSignature k=v&k=v...` with the pairs in any order.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        let body = strip_prefix_ci(text, TOKEN_PREFIX)
            .filter(|rest| rest.starts_with(' '))
            .ok_or(TokenError::MissingPrefix)?
            .trim_start();
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for pair in body.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (slot, name) = match k.to_ascii_lowercase().as_str() {
                "sr" => (&mut sr, "sr"),
                "sig" => (&mut sig, "sig"),
                "se" => (&mut se, "se"),
                "skn" => (&mut skn, "skn"),
                _ => continue,
            };
            if slot.replace(v).is_some() {
                return Err(TokenError::DuplicateField(name));
            }
        }
        let se_text = uri::percent_decode(se.ok_or(TokenError::MissingField("se"))?);
        let expiry = se_text
            .trim()
            .parse()
            .map_err(|_| TokenError::BadExpiry(se_text.clone()))?;
        let key_name = uri::form_decode(skn.ok_or(TokenError::MissingField("skn"))?);
        if key_name.is_empty() || key_name.len() > MAX_KEY_NAME_LEN {
            return Err(TokenError::BadKeyNameLength(key_name.len()));
        }
        Ok(SasToken {
            resource_raw: sr.ok_or(TokenError::MissingField("sr"))?.to_owned(),
            signature: uri::percent_decode(sig.ok_or(TokenError::MissingField("sig"))?),
            expiry,
            key_name,
        })
    }

    /// The `sr` value exactly as it appears in the token (still URL-encoded).
    pub fn resource_raw(&self) -> &str {
        &self.resource_raw
    }

    /// The decoded audience URI.
    pub fn audience(&self) -> String {
        uri::form_decode(&self.resource_raw)
    }

    /// Expiry, Unix seconds.
    pub fn expiry(&self) -> u64 {
        self.expiry
    }

    /// Name of the authorization rule whose key signed the token.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// True when `key` produced this token's signature (constant-time comparison).
    pub fn is_signed_by(&self, key: &SasKey) -> bool {
        key.verifies(&self.resource_raw, self.expiry, &self.signature)
    }

    /// The full token text, for an HTTP header or `sb-hc-token`. It is a secret.
    pub fn expose(&self) -> String {
        format!(
            "{TOKEN_PREFIX} sr={}&sig={}&se={}&skn={}",
            self.resource_raw,
            uri::form_encode(&self.signature),
            self.expiry,
            uri::form_encode(&self.key_name)
        )
    }
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasToken")
            .field("sr", &self.resource_raw)
            .field("se", &self.expiry)
            .field("skn", &self.key_name)
            .field("sig", &"<redacted>")
            .finish()
    }
}

/// Case-insensitive ASCII prefix strip.
pub(crate) fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "dGVzdGtleXRlc3RrZXl0ZXN0a2V5dGVzdGtleTEyMzQ=";
    const SE: u64 = 1_700_000_000;

    fn key() -> SasKey {
        SasKey::new(KEY).unwrap()
    }

    /// Every vector of PROTOCOL.md §3.2.
    #[test]
    fn known_answers() {
        let cases = [
            (
                "http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco%2F",
                "TwJ6q3OjTC00webwqKMTOcjnOBvArAJt4nOYZRUADNo=",
            ),
            (
                "http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco",
                "wYIn77YEsOZQ47wY0mAXg/Z68ihawxCJcm7EPhshRPk=",
            ),
            (
                "sb%3A%2F%2Fcontoso.servicebus.windows.net",
                "CGkHzMzcczMtqaMZRIW/t1XCx+/mLij0Z/BzsNAWfB4=",
            ),
        ];
        for (sr, sig) in cases {
            assert_eq!(key().sign(sr, SE), sig, "sr={sr}");
            assert!(key().verifies(sr, SE, sig));
        }
    }

    /// The §3.2 negative vector: signed with the base64-*decoded* key, so it must not verify.
    #[test]
    fn decoded_key_signature_is_rejected() {
        let sr = "http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco%2F";
        assert!(!key().verifies(sr, SE, "dd7BoNh2I/03mlf69rCqyyt/fDSAUOjyP6BDUpEhsdQ="));
    }

    #[test]
    fn full_token_row_one_parses_and_verifies() {
        let text = "SharedAccessSignature sr=http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco%2F&sig=TwJ6q3OjTC00webwqKMTOcjnOBvArAJt4nOYZRUADNo%3D&se=1700000000&skn=RootManageSharedAccessKey";
        let t = SasToken::parse(text).unwrap();
        assert_eq!(t.key_name(), "RootManageSharedAccessKey");
        assert_eq!(t.expiry(), SE);
        assert_eq!(t.audience(), "http://contoso.servicebus.windows.net/hyco/");
        assert!(t.is_signed_by(&key()));
        assert_eq!(t.expose(), text);
        assert!(!t.is_signed_by(&SasKey::new("other").unwrap()));
    }

    #[test]
    fn pairs_in_any_order_and_prefix_case() {
        let t = SasToken::create("http://ns/hc", "rule", &key(), SE);
        let reordered = format!(
            "sharedaccesssignature sig={}&se={}&skn=rule&sr={}",
            uri::form_encode(&t.signature),
            SE,
            t.resource_raw()
        );
        assert!(SasToken::parse(&reordered).unwrap().is_signed_by(&key()));
    }

    #[test]
    fn malformed_tokens_name_the_problem() {
        assert_eq!(SasToken::parse("Bearer x"), Err(TokenError::MissingPrefix));
        assert_eq!(
            SasToken::parse("SharedAccessSignaturesr=a"),
            Err(TokenError::MissingPrefix)
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&sig=b&skn=c"),
            Err(TokenError::MissingField("se"))
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&sig=b&se=1&se=2&skn=c"),
            Err(TokenError::DuplicateField("se"))
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&sig=b&se=soon&skn=c"),
            Err(TokenError::BadExpiry("soon".into()))
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&sig=b&se=1&skn="),
            Err(TokenError::BadKeyNameLength(0))
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sig=b&se=1&skn=c"),
            Err(TokenError::MissingField("sr"))
        );
    }

    #[test]
    fn raw_plus_in_signature_survives() {
        // Python's quote() may leave '/' raw; a client may also leave '+' raw.
        let t = SasToken::create_raw("sb%3A%2F%2Fcontoso.servicebus.windows.net", "r", &key(), SE);
        let text = format!(
            "SharedAccessSignature sr={}&sig={}&se={SE}&skn=r",
            t.resource_raw(),
            t.signature
        );
        assert!(t.signature.contains('+') && t.signature.contains('/'));
        assert!(SasToken::parse(&text).unwrap().is_signed_by(&key()));
    }

    #[test]
    fn debug_redacts_secrets() {
        let t = SasToken::create("http://ns/hc", "rule", &key(), SE);
        let shown = format!("{:?} {:?}", key(), t);
        assert!(
            !shown.contains(KEY) && !shown.contains(&t.signature),
            "{shown}"
        );
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn key_length_limits() {
        assert_eq!(SasKey::new(""), Err(TokenError::BadKeyLength(0)));
        assert_eq!(
            SasKey::new("k".repeat(257)),
            Err(TokenError::BadKeyLength(257))
        );
        assert_eq!(SasKey::from_random_bytes([7; 32]).expose().len(), 44);
    }

    proptest! {
        #[test]
        fn create_parse_round_trip(path in "[a-zA-Z0-9/ _.-]{0,40}", name in "[a-zA-Z0-9_.-]{1,30}", key_text in "[ -~]{1,64}", se in 0u64..4_000_000_000) {
            let key = SasKey::new(key_text).unwrap();
            let t = SasToken::create(&format!("http://ns.example/{path}"), &name, &key, se);
            let parsed = SasToken::parse(&t.expose()).unwrap();
            prop_assert_eq!(&parsed, &t);
            prop_assert!(parsed.is_signed_by(&key));
            prop_assert_eq!(parsed.audience(), format!("http://ns.example/{path}"));
        }

        #[test]
        fn parse_never_panics(text in ".{0,200}") {
            let _ = SasToken::parse(&text);
            let _ = SasToken::parse(&format!("SharedAccessSignature {text}"));
        }
    }
}
