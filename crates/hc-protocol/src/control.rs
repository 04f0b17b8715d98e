//! Control-channel messages (PROTOCOL.md §5.2, §5.3): one JSON object per text frame, whose
//! single top-level key names the command.
//!
//! Service -> listener: [`ServiceCommand`] (`accept`, `request`). Listener -> service:
//! [`ListenerCommand`] (`response`, `renewToken`). Both are closed enums, so nothing can emit
//! an unknown top-level command (Java listeners drop the channel on one, §15 MUST 5). Incoming
//! text goes through [`parse`], which reports an unknown command by name instead of failing.

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Header names and values; serialized as a JSON object of strings (§5.2: Java casts every
/// value to `String`). On input, numbers and booleans become strings and arrays are joined
/// with `", "`, since Node listeners may send `Content-Length: 5` as a number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// First value of `name`, compared case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Adds a header, joining with `", "` onto an existing one of the same name.
    pub fn append(&mut self, name: &str, value: &str) {
        match self
            .0
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(value);
            }
            None => self.0.push((name.to_owned(), value.to_owned())),
        }
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Headers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of header names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Headers, A::Error> {
                let mut h = Headers::default();
                while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                    h.append(&k, &value_text(&v));
                }
                Ok(h)
            }
        }
        d.deserialize_map(V)
    }
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => {
            items.iter().map(value_text).collect::<Vec<_>>().join(", ")
        }
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The sender's address as the relay saw it. Java requires it in every `accept` (§5.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteEndpoint {
    /// IP address text.
    pub address: String,
    /// TCP port.
    pub port: u16,
}

/// `accept`: a sender wants a connection; join the rendezvous at `address` (§5.2).
/// Field order is .NET's DataContract order: address, id, connectHeaders, remoteEndpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptCommand {
    /// Single-use rendezvous URL (`sb-hc-action=accept`), no token in it.
    pub address: String,
    /// Tracking id (`{sb-hc-id}_G<n>`).
    pub id: String,
    /// The sender's upgrade headers minus auth; always has `Sec-WebSocket-Key`.
    pub connect_headers: Headers,
    /// The sender's IP and port.
    pub remote_endpoint: RemoteEndpoint,
}

/// `request`: an HTTP request for the listener (§5.2, §8). Build it with [`RequestCommand::full`]
/// or [`RequestCommand::rendezvous_only`]; the two forms differ by whether `method` and `body`
/// are present, and `body` is never `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestCommand {
    /// Rendezvous URL (`sb-hc-action=request`), valid for this request only.
    pub address: String,
    /// Request id, echoed as the response's `requestId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Path including the hybrid connection name, plus the filtered query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_target: Option<String>,
    /// HTTP method; present only in the full form (hyco-https keys on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The sender's IP and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_endpoint: Option<RemoteEndpoint>,
    /// Request headers minus hop-by-hop and auth headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<Headers>,
    /// True when one binary message with the body follows; present only in the full form
    /// (.NET and Java key on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<bool>,
}

/// What a full `request` carries besides its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Request id.
    pub id: String,
    /// Path with hybrid connection name and filtered query.
    pub request_target: String,
    /// HTTP method.
    pub method: String,
    /// The sender's IP and port.
    pub remote_endpoint: RemoteEndpoint,
    /// Headers to pass on.
    pub request_headers: Headers,
}

impl RequestCommand {
    /// The full form: delivered with its head, followed by a body message when `body`.
    pub fn full(address: String, head: RequestHead, body: bool) -> Self {
        RequestCommand {
            address,
            id: Some(head.id),
            request_target: Some(head.request_target),
            method: Some(head.method),
            remote_endpoint: Some(head.remote_endpoint),
            request_headers: Some(head.request_headers),
            body: Some(body),
        }
    }

    /// The "go rendezvous" form: only the address (and id).
    pub fn rendezvous_only(address: String, id: String) -> Self {
        RequestCommand {
            address,
            id: Some(id),
            request_target: None,
            method: None,
            remote_endpoint: None,
            request_headers: None,
            body: None,
        }
    }

    /// True for the full form.
    pub fn is_full(&self) -> bool {
        self.method.is_some() && self.body.is_some()
    }
}

/// A service -> listener command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ServiceCommand {
    /// A WebSocket sender is waiting.
    Accept(AcceptCommand),
    /// An HTTP request is waiting.
    Request(RequestCommand),
}

/// `response` to a `request` (§5.3). `statusCode` is read from a number or a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseCommand {
    /// The `request.id` this answers.
    pub request_id: String,
    /// HTTP status.
    #[serde(deserialize_with = "status_code")]
    pub status_code: u16,
    /// Reason phrase, passed to the client exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_description: Option<String>,
    /// Response headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<Headers>,
    /// True when one binary message with the body follows.
    pub body: bool,
}

fn status_code<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|c| (100..=999).contains(c))
    .ok_or_else(|| de::Error::custom("statusCode must be a number 100..999 or such a string"))
}

/// `renewToken` (§5.3): a fresh token for the control channel; no reply.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewTokenCommand {
    /// The new SAS token text (a secret).
    pub token: String,
}

impl fmt::Debug for RenewTokenCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RenewTokenCommand { token: <redacted> }")
    }
}

/// A listener -> service command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ListenerCommand {
    /// The answer to an HTTP `request`.
    Response(ResponseCommand),
    /// Token renewal.
    RenewToken(RenewTokenCommand),
}

/// Result of reading one control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<T> {
    /// A command this side understands.
    Known(T),
    /// A well-formed message with another top-level key (e.g. .NET's debug `injectFault`).
    Unknown(String),
}

/// Why a control message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Not a JSON object with exactly one key.
    #[error("control message is not a JSON object with exactly one command key")]
    NotACommand,
    /// A known command with bad fields.
    #[error("control message '{command}' is invalid: {reason}")]
    BadCommand {
        /// The command name.
        command: String,
        /// What serde said.
        reason: String,
        /// The command's `requestId` when it has a string one, so a `response` that cannot be
        /// read can still fail the request it names instead of leaving it to time out.
        request_id: Option<String>,
    },
    /// JSON syntax error.
    #[error("control message is not valid JSON: {0}")]
    Json(String),
}

/// Parses one control message into `T` (a [`ServiceCommand`] or [`ListenerCommand`]), whose
/// variant names are `known`.
pub fn parse<T: DeserializeOwned>(text: &str, known: &[&str]) -> Result<Incoming<T>, ControlError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ControlError::Json(e.to_string()))?;
    let obj = value
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or(ControlError::NotACommand)?;
    let command = obj.keys().next().cloned().unwrap_or_default();
    if !known.contains(&command.as_str()) {
        return Ok(Incoming::Unknown(command));
    }
    let request_id = obj
        .get(&command)
        .and_then(|c| c.get("requestId"))
        .and_then(|id| id.as_str())
        .map(str::to_owned);
    serde_json::from_value(value)
        .map(Incoming::Known)
        .map_err(|e| ControlError::BadCommand {
            command,
            reason: e.to_string(),
            request_id,
        })
}

impl ListenerCommand {
    /// Command names this enum covers.
    pub const NAMES: [&'static str; 2] = ["response", "renewToken"];

    /// Parses a listener message.
    pub fn parse(text: &str) -> Result<Incoming<Self>, ControlError> {
        parse(text, &Self::NAMES)
    }
}

impl ServiceCommand {
    /// Command names this enum covers.
    pub const NAMES: [&'static str; 2] = ["accept", "request"];

    /// Parses a service message.
    pub fn parse(text: &str) -> Result<Incoming<Self>, ControlError> {
        parse(text, &Self::NAMES)
    }
}

/// JSON text of a command. These types hold only strings, numbers and maps, so serializing
/// cannot fail.
pub fn to_json<T: Serialize>(command: &T) -> String {
    serde_json::to_string(command).expect("control messages hold only plain data")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept() -> ServiceCommand {
        let mut h = Headers::default();
        h.append("Host", "contoso.localhost:9443");
        h.append("Sec-WebSocket-Key", "l8fWd829IrZbEqUcLejv+Q==");
        ServiceCommand::Accept(AcceptCommand {
            address: "wss://h/$hc/x?sb-hc-action=accept&sb-hc-id=1_G0".into(),
            id: "1_G0".into(),
            connect_headers: h,
            remote_endpoint: RemoteEndpoint {
                address: "127.0.0.1".into(),
                port: 5000,
            },
        })
    }

    #[test]
    fn accept_shape_and_field_order() {
        let json = to_json(&accept());
        assert_eq!(
            json,
            r#"{"accept":{"address":"wss://h/$hc/x?sb-hc-action=accept&sb-hc-id=1_G0","id":"1_G0","connectHeaders":{"Host":"contoso.localhost:9443","Sec-WebSocket-Key":"l8fWd829IrZbEqUcLejv+Q=="},"remoteEndpoint":{"address":"127.0.0.1","port":5000}}}"#
        );
        assert_eq!(
            ServiceCommand::parse(&json).unwrap(),
            Incoming::Known(accept())
        );
    }

    #[test]
    fn request_forms_never_carry_null_body() {
        let head = RequestHead {
            id: "r1".into(),
            request_target: "/hyco/a?b=1".into(),
            method: "POST".into(),
            remote_endpoint: RemoteEndpoint {
                address: "::1".into(),
                port: 1,
            },
            request_headers: Headers(vec![("X-Multi".into(), "a, b".into())]),
        };
        let full = to_json(&ServiceCommand::Request(RequestCommand::full(
            "wss://a".into(),
            head,
            true,
        )));
        assert!(
            full.contains(r#""method":"POST""#) && full.contains(r#""body":true"#),
            "{full}"
        );
        let rv = to_json(&ServiceCommand::Request(RequestCommand::rendezvous_only(
            "wss://a".into(),
            "r1".into(),
        )));
        assert_eq!(rv, r#"{"request":{"address":"wss://a","id":"r1"}}"#);
        assert!(!full.contains("null") && !rv.contains("null"));
    }

    #[test]
    fn response_status_as_number_or_string() {
        for text in [
            r#"{"response":{"requestId":"r","statusCode":200,"statusDescription":"OK","body":true}}"#,
            r#"{"response":{"body":true,"requestId":"r","statusCode":"200","statusDescription":"OK","responseHeaders":{"Content-Length":5,"X":["a","b"]}}}"#,
        ] {
            let Incoming::Known(ListenerCommand::Response(r)) =
                ListenerCommand::parse(text).unwrap()
            else {
                panic!("{text}")
            };
            assert_eq!(
                (r.status_code, r.body, r.request_id.as_str()),
                (200, true, "r")
            );
        }
        let text = r#"{"response":{"body":false,"requestId":"r","statusCode":200,"responseHeaders":{"Content-Length":5,"X":["a","b"]}}}"#;
        let Incoming::Known(ListenerCommand::Response(r)) = ListenerCommand::parse(text).unwrap()
        else {
            panic!()
        };
        let h = r.response_headers.unwrap();
        assert_eq!(
            (h.get("content-length"), h.get("x")),
            (Some("5"), Some("a, b"))
        );
    }

    #[test]
    fn bad_and_unknown_messages() {
        assert_eq!(
            ListenerCommand::parse(r#"{"injectFault":{"delay":"00:01:00"}}"#).unwrap(),
            Incoming::Unknown("injectFault".into())
        );
        assert_eq!(ListenerCommand::parse("[]"), Err(ControlError::NotACommand));
        assert_eq!(
            ListenerCommand::parse(r#"{"a":1,"b":2}"#),
            Err(ControlError::NotACommand)
        );
        assert!(matches!(
            ListenerCommand::parse("{"),
            Err(ControlError::Json(_))
        ));
        let err = ListenerCommand::parse(
            r#"{"response":{"requestId":"r","statusCode":"abc","body":true}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(err, ControlError::BadCommand { ref command, ref request_id, .. } if command == "response" && request_id.as_deref() == Some("r")),
            "{err}"
        );
        let err = ListenerCommand::parse(
            r#"{"response":{"requestId":"r","statusCode":70000,"body":true}}"#,
        )
        .unwrap_err();
        assert!(matches!(err, ControlError::BadCommand { .. }));
    }

    #[test]
    fn renew_token_round_trip_and_redaction() {
        let cmd = ListenerCommand::RenewToken(RenewTokenCommand {
            token: "SharedAccessSignature sr=a&sig=SECRET".into(),
        });
        let json = to_json(&cmd);
        assert_eq!(
            json,
            r#"{"renewToken":{"token":"SharedAccessSignature sr=a&sig=SECRET"}}"#
        );
        assert_eq!(
            ListenerCommand::parse(&json).unwrap(),
            Incoming::Known(cmd.clone())
        );
        assert!(!format!("{cmd:?}").contains("SECRET"));
    }
}
