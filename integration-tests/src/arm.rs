//! A client of the emulator's ARM endpoint over real HTTPS (hyper, one connection per call),
//! for tests that drive the management plane without Microsoft's clients.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;

/// An HTTPS client of the ARM endpoint.
#[derive(Debug)]
pub struct Arm {
    /// The endpoint.
    pub addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    /// The CA the endpoint's certificate chains to.
    pub ca_pem: String,
    /// Bearer token sent (none: no `Authorization`).
    pub token: Option<String>,
}

/// Status, headers and JSON body (Null when empty).
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// JSON body (Null when empty).
    pub body: Value,
}

impl Arm {
    /// A client of the endpoint at `addr` trusting `ca_pem`, with a dummy bearer token.
    pub fn new(addr: SocketAddr, ca_pem: &str) -> Arm {
        Arm {
            addr,
            tls: crate::client_tls(ca_pem),
            ca_pem: ca_pem.to_owned(),
            token: Some("emulator-dev-token".into()),
        }
    }

    /// One request with raw headers and body.
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        let stream = crate::connect_stream(self.addr, Some(self.tls.clone()), "localhost".into())
            .await
            .unwrap();
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut all: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| ("authorization", b))
            .into_iter()
            .collect();
        all.extend_from_slice(headers);
        let (head, bytes) = hc_client::handshake::http_request(
            stream,
            method.parse().unwrap(),
            path,
            &format!("localhost:{}", self.addr.port()),
            &all,
            body,
        )
        .await
        .unwrap();
        let status = head.status;
        let headers = head
            .headers
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect::<http::HeaderMap>();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// One request with a JSON body (or none).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.call_raw(method, path, &[("content-type", "application/json")], body)
            .await
    }
}
