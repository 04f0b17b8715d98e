//! Relay connection strings (PROTOCOL.md §4).
//!
//! Wire shape: `Endpoint=sb://{ns}/;SharedAccessKeyName={rule};SharedAccessKey={key}[;EntityPath={hc}]`
//! or `Endpoint=…;SharedAccessSignature=SharedAccessSignature sr=…[;EntityPath=…]`, plus the
//! optional `OperationTimeout` and `Authentication`. Parsing follows .NET's builder: split on
//! `;` (empty parts dropped), each part on its *first* `=`, keys case-insensitive, unknown keys
//! refused. Output uses the field order Microsoft's HCM requires (Endpoint, SharedAccessKeyName,
//! SharedAccessKey, EntityPath).

use std::fmt;

use crate::sas::{SasKey, TokenError};
use crate::uri;

/// How a connection string authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A rule name and one of its keys; tokens are made from them.
    Key {
        /// `SharedAccessKeyName`.
        name: String,
        /// `SharedAccessKey`.
        key: SasKey,
    },
    /// A ready-made token (`SharedAccessSignature=`); it dies at its `se`.
    Signature(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Key { name, .. } => f
                .debug_struct("Key")
                .field("name", name)
                .field("key", &"<redacted>")
                .finish(),
            Credential::Signature(_) => f.write_str("Signature(<redacted>)"),
        }
    }
}

/// A parsed connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// `Endpoint` as written, e.g. `sb://contoso.servicebus.windows.net/`.
    pub endpoint: String,
    /// `EntityPath`: the hybrid connection, if named.
    pub entity_path: Option<String>,
    /// Key or token; `None` for senders to a hybrid connection without client authorization.
    pub credential: Option<Credential>,
    /// `OperationTimeout`, kept as written (a .NET TimeSpan such as `00:01:00`).
    pub operation_timeout: Option<String>,
    /// `Authentication` (e.g. `Managed Identity`), kept as written.
    pub authentication: Option<String>,
}

/// What is wrong with a connection string. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    /// A `;`-separated part has no `=`.
    #[error("connection string part {0} has no '=' (expected Key=Value)")]
    NoEquals(usize),
    /// A key that .NET's builder does not know.
    #[error("The connection string contains unknown parameter '{0}'.")]
    UnknownKey(String),
    /// The same key twice.
    #[error("connection string has '{0}' twice")]
    DuplicateKey(&'static str),
    /// No `Endpoint`.
    #[error("connection string has no Endpoint")]
    MissingEndpoint,
    /// `Endpoint` is not an absolute URI with a host.
    #[error(
        "connection string Endpoint '{0}' is not an absolute URI such as sb://contoso.servicebus.windows.net/"
    )]
    BadEndpoint(String),
    /// Only one half of the key-name/key pair.
    #[error("connection string has {0} without {1}; they must come together")]
    HalfPair(&'static str, &'static str),
    /// `SharedAccessSignature` combined with a key.
    #[error(
        "connection string combines SharedAccessSignature with SharedAccessKeyName/SharedAccessKey"
    )]
    SignatureWithKey,
    /// The key is empty or too long.
    #[error("connection string SharedAccessKey is invalid: {0}")]
    BadKey(TokenError),
}

const KEYS: [&str; 7] = [
    "Endpoint",
    "EntityPath",
    "SharedAccessKeyName",
    "SharedAccessKey",
    "SharedAccessSignature",
    "OperationTimeout",
    "Authentication",
];

impl ConnectionString {
    /// Parses a connection string; errors name the offending key, never a secret.
    pub fn parse(text: &str) -> Result<Self, ConnectionStringError> {
        let mut values: [Option<String>; 7] = Default::default();
        for (i, part) in text
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            let (key, value) = part
                .split_once('=')
                .ok_or(ConnectionStringError::NoEquals(i + 1))?;
            let key = key.trim();
            let slot = KEYS
                .iter()
                .position(|k| k.eq_ignore_ascii_case(key))
                .ok_or_else(|| ConnectionStringError::UnknownKey(key.to_owned()))?;
            if values[slot].replace(value.trim().to_owned()).is_some() {
                return Err(ConnectionStringError::DuplicateKey(KEYS[slot]));
            }
        }
        let [
            endpoint,
            entity_path,
            key_name,
            key,
            signature,
            operation_timeout,
            authentication,
        ] = values;
        let endpoint = endpoint.ok_or(ConnectionStringError::MissingEndpoint)?;
        match uri::parse(&endpoint) {
            Ok(parts) if parts.scheme.is_some() => {}
            _ => return Err(ConnectionStringError::BadEndpoint(endpoint)),
        }
        let credential = credential(key_name, key, signature)?;
        Ok(ConnectionString {
            endpoint,
            entity_path,
            credential,
            operation_timeout,
            authentication,
        })
    }

    /// Host of the namespace, lower-cased (e.g. `contoso.servicebus.windows.net`).
    pub fn namespace_host(&self) -> String {
        uri::parse(&self.endpoint)
            .map(|p| p.host.to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// Explicit port of the endpoint, if any (`sb://localhost:9443/`).
    pub fn port(&self) -> Option<u16> {
        uri::parse(&self.endpoint).ok().and_then(|p| p.port)
    }

    /// The text, with secrets, in the order Microsoft's HCM requires. Handle with care.
    pub fn expose(&self) -> String {
        let mut parts = vec![format!("Endpoint={}", self.endpoint)];
        match &self.credential {
            Some(Credential::Key { name, key }) => {
                parts.push(format!("SharedAccessKeyName={name}"));
                parts.push(format!("SharedAccessKey={}", key.expose()));
            }
            Some(Credential::Signature(token)) => {
                parts.push(format!("SharedAccessSignature={token}"))
            }
            None => {}
        }
        let optional = [
            ("EntityPath", &self.entity_path),
            ("OperationTimeout", &self.operation_timeout),
            ("Authentication", &self.authentication),
        ];
        parts.extend(
            optional
                .into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}"))),
        );
        parts.join(";")
    }
}

fn credential(
    name: Option<String>,
    key: Option<String>,
    signature: Option<String>,
) -> Result<Option<Credential>, ConnectionStringError> {
    match (name, key, signature) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            Err(ConnectionStringError::SignatureWithKey)
        }
        (None, None, Some(token)) => Ok(Some(Credential::Signature(token))),
        (Some(name), Some(key), None) => {
            let key = SasKey::new(key).map_err(ConnectionStringError::BadKey)?;
            Ok(Some(Credential::Key { name, key }))
        }
        (Some(_), None, None) => Err(ConnectionStringError::HalfPair(
            "SharedAccessKeyName",
            "SharedAccessKey",
        )),
        (None, Some(_), None) => Err(ConnectionStringError::HalfPair(
            "SharedAccessKey",
            "SharedAccessKeyName",
        )),
        (None, None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GATEWAY: &str = "Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=defaultListener;SharedAccessKey=abc+/def=;EntityPath=hyco";

    #[test]
    fn portal_gateway_string_round_trips_in_hcm_order() {
        let cs = ConnectionString::parse(GATEWAY).unwrap();
        assert_eq!(cs.namespace_host(), "contoso.servicebus.windows.net");
        assert_eq!(cs.entity_path.as_deref(), Some("hyco"));
        assert!(
            matches!(&cs.credential, Some(Credential::Key { name, key }) if name == "defaultListener" && key.expose() == "abc+/def=")
        );
        assert_eq!(cs.expose(), GATEWAY);
    }

    #[test]
    fn keys_are_case_insensitive_and_values_split_on_first_equals() {
        let cs = ConnectionString::parse(
            "endpoint=sb://h:9443/;entitypath=x;sharedaccesskeyname=r;SHAREDACCESSKEY=k==;",
        )
        .unwrap();
        assert_eq!(cs.port(), Some(9443));
        assert_eq!(
            cs.expose(),
            "Endpoint=sb://h:9443/;SharedAccessKeyName=r;SharedAccessKey=k==;EntityPath=x"
        );
    }

    #[test]
    fn signature_form() {
        let cs =
            ConnectionString::parse("Endpoint=sb://h/;SharedAccessSignature=SharedAccessSignature sr=a&sig=b=&se=1&skn=r;EntityPath=e")
                .unwrap();
        assert!(matches!(&cs.credential, Some(Credential::Signature(t)) if t.ends_with("skn=r")));
        assert_eq!(
            cs.expose(),
            "Endpoint=sb://h/;SharedAccessSignature=SharedAccessSignature sr=a&sig=b=&se=1&skn=r;EntityPath=e"
        );
    }

    #[test]
    fn errors_name_what_is_wrong_without_secrets() {
        use ConnectionStringError::*;
        let cases: [(&str, ConnectionStringError); 8] = [
            ("Endpoint=sb://h/;Foo=1", UnknownKey("Foo".into())),
            (
                "Endpoint=sb://h/;SharedAccessKeyName=r",
                HalfPair("SharedAccessKeyName", "SharedAccessKey"),
            ),
            (
                "Endpoint=sb://h/;SharedAccessKey=secret",
                HalfPair("SharedAccessKey", "SharedAccessKeyName"),
            ),
            (
                "Endpoint=sb://h/;SharedAccessKeyName=r;SharedAccessKey=s;SharedAccessSignature=x",
                SignatureWithKey,
            ),
            ("SharedAccessKeyName=r;SharedAccessKey=s", MissingEndpoint),
            (
                "Endpoint=contoso;SharedAccessKeyName=r;SharedAccessKey=s",
                BadEndpoint("contoso".into()),
            ),
            ("Endpoint=sb://h/;secretwithoutequals", NoEquals(2)),
            (
                "Endpoint=sb://h/;Endpoint=sb://i/",
                DuplicateKey("Endpoint"),
            ),
        ];
        for (text, want) in cases {
            let err = ConnectionString::parse(text).unwrap_err();
            assert_eq!(err, want, "{text}");
            assert!(!err.to_string().contains("secret"));
        }
        assert!(
            ConnectionString::parse("Endpoint=sb://h/;Foo=1")
                .unwrap_err()
                .to_string()
                .contains("unknown parameter 'Foo'")
        );
    }

    #[test]
    fn debug_redacts_key() {
        let cs = ConnectionString::parse(GATEWAY).unwrap();
        let shown = format!("{cs:?}");
        assert!(
            !shown.contains("abc+/def=") && shown.contains("redacted"),
            "{shown}"
        );
    }

    proptest! {
        #[test]
        fn round_trip(ns in "[a-z][a-z0-9-]{5,20}", rule in "[a-zA-Z0-9-]{1,20}", key in "[a-zA-Z0-9+/=]{1,60}", hc in proptest::option::of("[a-zA-Z0-9-]{1,20}")) {
            let cs = ConnectionString {
                endpoint: format!("sb://{ns}.servicebus.windows.net/"),
                entity_path: hc,
                credential: Some(Credential::Key { name: rule, key: SasKey::new(key).unwrap() }),
                operation_timeout: None,
                authentication: None,
            };
            prop_assert_eq!(ConnectionString::parse(&cs.expose()).unwrap(), cs);
        }

        #[test]
        fn parse_never_panics(text in ".{0,200}") {
            let _ = ConnectionString::parse(&text);
        }
    }
}
