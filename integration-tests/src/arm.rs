//! A client of the emulator's ARM endpoint over real HTTPS (hyper, one connection per call),
//! for tests that drive the management plane without Microsoft's clients.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
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
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("localhost:{}", self.addr.port()));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
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
