//! The hybrid connection's `userMetadata` and the endpoint it names (PROTOCOL.md §12.1).
//!
//! Wire shape: a JSON array of `{"key":…,"value":…}` objects, e.g.
//! `[{"key":"endpoint","value":"myhost.corp.local:1433"}]`. Parsing copies Microsoft's HCM:
//! the whole text lower-cased, the first `endpoint` key (any case), its value split on `:`
//! into exactly a host (`[a-zA-Z0-9.-]+`) and a port (1..=5 digits).

use std::fmt;

/// An endpoint `host:port` named in `userMetadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IPv4 address (lower-cased).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Why no endpoint could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// Not a JSON array of key/value objects.
    #[error("userMetadata is not a JSON array of {{\"key\",\"value\"}} objects: '{0}'")]
    NotKeyValueArray(String),
    /// No `endpoint` key.
    #[error("UserMetadata must contain an endpoint composed of a host and port; found '{0}'")]
    NoEndpoint(String),
    /// The endpoint value is not `host:port`.
    #[error(
        "userMetadata endpoint '{0}' is not host:port (host letters, digits, '.', '-'; port 1-65535)"
    )]
    BadEndpoint(String),
}

impl Endpoint {
    /// Parses `host:port` with HCM's rule.
    pub fn parse(text: &str) -> Result<Endpoint, MetadataError> {
        let bad = || MetadataError::BadEndpoint(text.to_owned());
        let (host, port) = text.trim().split_once(':').ok_or_else(bad)?;
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        let port_ok = (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit());
        let port: u16 = if host_ok && port_ok {
            port.parse().map_err(|_| bad())?
        } else {
            return Err(bad());
        };
        if port == 0 {
            return Err(bad());
        }
        Ok(Endpoint {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The `userMetadata` text App Service writes for this endpoint.
    pub fn to_user_metadata(&self) -> String {
        serde_json::json!([{ "key": "endpoint", "value": self.to_string() }]).to_string()
    }

    /// Reads the endpoint from `userMetadata`.
    pub fn from_user_metadata(metadata: &str) -> Result<Endpoint, MetadataError> {
        let lowered = metadata.to_lowercase();
        let items: Vec<serde_json::Value> = serde_json::from_str(&lowered)
            .map_err(|_| MetadataError::NotKeyValueArray(metadata.to_owned()))?;
        let value = items
            .iter()
            .find(|item| item.get("key").and_then(|k| k.as_str()) == Some("endpoint"))
            .and_then(|item| item.get("value").and_then(|v| v.as_str()))
            .ok_or_else(|| MetadataError::NoEndpoint(metadata.to_owned()))?;
        Endpoint::parse(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = Endpoint::parse("MyHost.corp.local:1433").unwrap();
        assert_eq!(e.to_string(), "myhost.corp.local:1433");
        assert_eq!(
            e.to_user_metadata(),
            r#"[{"key":"endpoint","value":"myhost.corp.local:1433"}]"#
        );
        assert_eq!(
            Endpoint::from_user_metadata(&e.to_user_metadata()).unwrap(),
            e
        );
        let mixed = r#"[{"key":"other","value":"x"},{"Key":"ENDPOINT","Value":"Db:5432"}]"#;
        assert_eq!(
            Endpoint::from_user_metadata(mixed).unwrap(),
            Endpoint {
                host: "db".into(),
                port: 5432
            }
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(
            Endpoint::from_user_metadata("nope"),
            Err(MetadataError::NotKeyValueArray(_))
        ));
        assert!(matches!(
            Endpoint::from_user_metadata("[]"),
            Err(MetadataError::NoEndpoint(_))
        ));
        for bad in [
            "host",
            "host:",
            ":80",
            "host:0",
            "host:123456",
            "[::1]:80",
            "a b:1",
            "h:1:2",
            "h:99999",
        ] {
            assert!(
                matches!(Endpoint::parse(bad), Err(MetadataError::BadEndpoint(_))),
                "{bad}"
            );
        }
    }
}
