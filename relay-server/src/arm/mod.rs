//! The management plane: an Azure Resource Manager endpoint for Microsoft.Relay and
//! Microsoft.Web hybrid connections, plus the identity and discovery endpoints its clients
//! need offline, so that az CLI, the Azure SDKs and Terraform work unchanged (ARM.md).
//!
//! Served over HTTPS on its own listener (clients refuse to send a bearer token to `http://`,
//! ARM.md §1.1). Paths and names match case-insensitively and stored names are echoed (§1.10);
//! any `api-version` is accepted and answered with one superset shape (§1.3); long-running
//! operations complete at once (§1.5). Everything changes the relay's one model, so what ARM
//! makes is live on the data plane at once and persisted in `state.json`.
//!
//! `identity` answers metadata, OpenID, token and managed-identity requests and checks
//! bearer tokens; `groups` holds subscriptions and resource groups; `relay` and `web` the two
//! providers.

mod groups;
mod identity;
mod relay;
mod web;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use crate::model::ModelError;
use crate::state::{RelayState, TokenKey};
use crate::store::StoreError;

pub(crate) use identity::load_or_create_token_key;

/// Whether `token` is a bearer token this relay issued and still valid (the status page
/// accepts those from any address).
pub(crate) fn verify_bearer(state: &RelayState, token: &str) -> Result<(), &'static str> {
    identity::verify(token_key(state), token, now(state))
}

/// Largest request body the endpoint reads (ARM bodies are small JSON documents).
const MAX_BODY: usize = 1024 * 1024;

/// The ARM endpoint's router.
pub(crate) fn router(state: Arc<RelayState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

/// One request, read whole. `Debug` shows neither headers nor body (they carry tokens and
/// keys).
pub(crate) struct ArmRequest {
    method: Method,
    /// Path segments as sent.
    segments: Vec<String>,
    query: String,
    headers: HeaderMap,
    body: axum::body::Bytes,
    /// `https://{Host}`, the base URL clients reached us at.
    base: String,
}

impl std::fmt::Debug for ArmRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmRequest")
            .field("method", &self.method)
            .field("segments", &self.segments)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl ArmRequest {
    /// `Ok` when the request uses `method`, else 405 naming the path.
    pub(crate) fn only(&self, method: Method) -> Result<(), ArmError> {
        if self.method == method {
            Ok(())
        } else {
            Err(method_not_allowed(self))
        }
    }

    fn query(&self, name: &str) -> Option<String> {
        hc_protocol::address::query_value(&self.query, name)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (an empty body is `{}`); the error names what is wrong.
    fn json(&self) -> Result<Value, ArmError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(json!({}));
        }
        let value: Value = serde_json::from_slice(&self.body).map_err(|e| {
            ArmError::bad_request(format!("The request body is not valid JSON: {e}."))
        })?;
        if !value.is_object() {
            return Err(ArmError::bad_request(
                "The request body must be a JSON object.",
            ));
        }
        Ok(value)
    }
}

/// A failure, rendered as ARM's common `ErrorResponse` (ARM.md §2.5).
#[derive(Debug)]
pub(crate) struct ArmError {
    status: StatusCode,
    code: String,
    message: String,
}

impl ArmError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ArmError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    fn response(&self) -> Response {
        let body = json!({"error": {
            "code": self.code,
            "message": self.message,
            "target": null,
            "details": [],
            "additionalInfo": [],
        }});
        json_response(self.status, &body)
    }
}

impl From<ModelError> for ArmError {
    fn from(e: ModelError) -> Self {
        let message = format!("{}.", capitalized(&e.to_string()));
        match e {
            ModelError::NoNamespace(_)
            | ModelError::NoHybridConnection(..)
            | ModelError::NoRule(..) => ArmError::not_found(message),
            ModelError::NamespaceNameTaken(_) | ModelError::HostClash(..) => {
                ArmError::new(StatusCode::CONFLICT, "Conflict", message)
            }
            _ => ArmError::bad_request(message),
        }
    }
}

impl From<StoreError> for ArmError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Model(m) => m.into(),
            other => {
                tracing::error!(error = %other, "cannot save the model");
                ArmError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerError",
                    "The emulator could not save its state; see its log.",
                )
            }
        }
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

pub(crate) type ArmResult = Result<Response, ArmError>;

/// A JSON response with ARM's headers.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// 200 with a JSON body.
pub(crate) fn ok(body: &Value) -> ArmResult {
    Ok(json_response(StatusCode::OK, body))
}

/// A status with no body (DELETE answers).
pub(crate) fn empty(status: StatusCode) -> ArmResult {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    Ok(r)
}

/// A list as ARM pages it: everything on one page, `nextLink` null.
pub(crate) fn list(values: Vec<Value>) -> ArmResult {
    ok(&json!({"value": values, "nextLink": null}))
}

/// Case-insensitive comparison of a path segment with a keyword.
pub(crate) fn kw(segment: &str, word: &str) -> bool {
    segment.eq_ignore_ascii_case(word)
}

async fn dispatch(State(state): State<Arc<RelayState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(_) => {
            return ArmError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestBodyTooLarge",
                format!("The request body is larger than {MAX_BODY} bytes."),
            )
            .response();
        }
    };
    let request = ArmRequest {
        method: parts.method,
        segments: parts
            .uri
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts.headers,
        body,
        base: format!("https://{host}"),
    };
    let mut response = route(&state, &request).unwrap_or_else(|e| e.response());
    tracing::debug!(method = %request.method, path = %parts.uri.path(), status = response.status().as_u16(), "arm request");
    let request_id = hc_protocol::tracking::guid_from_bytes(rand::random());
    let correlation = request
        .header("x-ms-client-request-id")
        .and_then(|v| HeaderValue::from_str(v).ok())
        .unwrap_or_else(|| {
            HeaderValue::from_str(&request_id).unwrap_or(HeaderValue::from_static(""))
        });
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-ms-request-id", id);
    }
    response
        .headers_mut()
        .insert("x-ms-correlation-request-id", correlation);
    response
}

fn route(state: &RelayState, r: &ArmRequest) -> ArmResult {
    let segs: Vec<&str> = r.segments.iter().map(String::as_str).collect();
    if let Some(answer) = identity::route(state, r, &segs) {
        return answer;
    }
    identity::authenticate(state, r)?;
    if r.query("api-version").is_none() {
        return Err(ArmError::bad_request(
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
        .with_code("MissingApiVersionParameter"));
    }
    match segs.as_slice() {
        [p, provider, o]
            if kw(p, "providers") && kw(provider, "Microsoft.Relay") && kw(o, "operations") =>
        {
            relay::operations(r)
        }
        [t] if kw(t, "tenants") => identity::tenants(state, r),
        [s] if kw(s, "subscriptions") => groups::subscriptions(state, r),
        [s, sub] if kw(s, "subscriptions") => groups::subscription(state, r, sub),
        [s, sub, rest @ ..] if kw(s, "subscriptions") => subscription_scope(state, r, sub, rest),
        _ => Err(unknown(r)),
    }
}

fn subscription_scope(state: &RelayState, r: &ArmRequest, sub: &str, rest: &[&str]) -> ArmResult {
    match rest {
        [g] if kw(g, "resourceGroups") => groups::list_groups(state, r, sub),
        [g, rg] if kw(g, "resourceGroups") => groups::resource_group(state, r, sub, rg),
        [p, provider, more @ ..] if kw(p, "providers") && kw(provider, "Microsoft.Relay") => {
            relay::subscription_level(state, r, sub, more)
        }
        [g, rg, p, provider, more @ ..]
            if kw(g, "resourceGroups") && kw(p, "providers") && kw(provider, "Microsoft.Relay") =>
        {
            relay::group_level(state, r, &Scope::new(sub, rg), more)
        }
        [g, rg, p, provider, more @ ..]
            if kw(g, "resourceGroups") && kw(p, "providers") && kw(provider, "Microsoft.Web") =>
        {
            web::group_level(state, r, &Scope::new(sub, rg), more)
        }
        _ => Err(unknown(r)),
    }
}

/// A path the emulator does not serve: 404 naming it.
pub(crate) fn unknown(r: &ArmRequest) -> ArmError {
    ArmError::not_found(format!(
        "The emulator does not serve {} /{}.",
        r.method,
        r.segments.join("/")
    ))
}

/// A method the path does not take.
pub(crate) fn method_not_allowed(r: &ArmRequest) -> ArmError {
    ArmError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{} is not allowed on /{}.", r.method, r.segments.join("/")),
    )
}

impl ArmError {
    fn with_code(mut self, code: &str) -> Self {
        self.code = code.into();
        self
    }
}

/// A subscription and resource group from the path, names as sent.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub subscription: String,
    pub group: String,
}

impl Scope {
    fn new(subscription: &str, group: &str) -> Self {
        Scope {
            subscription: subscription.to_owned(),
            group: group.to_owned(),
        }
    }

    /// `/subscriptions/{sub}/resourceGroups/{group}` (camelCase `resourceGroups`, ARM.md
    /// §1.7) with the given group spelling.
    pub(crate) fn group_id(subscription: &str, group: &str) -> String {
        format!("/subscriptions/{subscription}/resourceGroups/{group}")
    }

    /// Whether a stored resource (subscription, group) is in this scope.
    pub(crate) fn holds(&self, subscription: &str, group: &str) -> bool {
        self.subscription.eq_ignore_ascii_case(subscription)
            && self.group.eq_ignore_ascii_case(group)
    }
}

/// The key of issued tokens, for `identity`.
pub(crate) fn token_key(state: &RelayState) -> &TokenKey {
    &state.token_key
}

/// Seconds since the epoch by the relay's clock.
pub(crate) fn now(state: &RelayState) -> u64 {
    state.options.clock.unix_now()
}

/// ARM's time format: RFC 3339 with seven fractional digits (ARM.md §2.1).
pub(crate) fn time(unix: u64) -> String {
    hc_protocol::tracking::dotnet_datetime(unix)
}

/// Tags from a body's `tags` (an object of strings), or `None` when absent.
pub(crate) fn tags(
    body: &Value,
) -> Result<Option<std::collections::BTreeMap<String, String>>, ArmError> {
    match body.get("tags") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Ok((k.clone(), other.to_string())),
            })
            .collect::<Result<_, ArmError>>()
            .map(Some),
        Some(_) => Err(ArmError::bad_request(
            "'tags' must be an object of strings.",
        )),
    }
}

/// An optional string field of a JSON object; the error names it.
pub(crate) fn opt_str<'a>(obj: &'a Value, field: &str) -> Result<Option<&'a str>, ArmError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ArmError::bad_request(format!(
            "'{field}' must be a string."
        ))),
    }
}
