//! Identity without Entra ID (ARM.md §4.1, §4.7): the cloud metadata document, OpenID
//! discovery and the client-credentials token endpoint per tenant, the App Service
//! managed-identity endpoint (`IDENTITY_ENDPOINT`/`IDENTITY_HEADER`) and the IMDS-style one.
//! Tokens are JWTs signed with HMAC-SHA256 by a key kept in the data directory; by default
//! any non-empty bearer token is accepted, in strict mode only unexpired ones signed here.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::{ArmError, ArmRequest, ArmResult, json_response, kw, now, ok, token_key};
use crate::state::{RelayState, TokenKey};

/// Lifetime of issued tokens (24 hours, as ARM.md §4.7 suggests).
const TOKEN_LIFETIME: u64 = 86_400;
/// File holding the token key in the data directory.
const TOKEN_KEY_FILE: &str = "arm-token-key";

/// The token key from `{dir}/arm-token-key`, made (mode 0600) the first time, so tokens
/// issued before a restart still verify after it.
pub(crate) fn load_or_create_token_key(dir: &Path) -> anyhow::Result<TokenKey> {
    use anyhow::Context as _;
    let path = dir.join(TOKEN_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = URL_SAFE_NO_PAD
                .decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok());
            if let Some(key) = bytes {
                return Ok(TokenKey(key));
            }
            tracing::warn!(path = %path.display(), "the token key file is damaged; making a new key (tokens issued before are no longer valid)");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let key: [u8; 32] = rand::random();
    hc_process::write_atomically(&path, URL_SAFE_NO_PAD.encode(key).as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(TokenKey(key))
}

/// The endpoints that need no bearer token; `None` for every other path.
pub(super) fn route(state: &RelayState, r: &ArmRequest, segs: &[&str]) -> Option<ArmResult> {
    let get = r.method == Method::GET;
    let post = r.method == Method::POST;
    let answer = match segs {
        [m, e] if get && kw(m, "metadata") && kw(e, "endpoints") => metadata(state, r),
        [m, i, o, t]
            if get
                && kw(m, "metadata")
                && kw(i, "identity")
                && kw(o, "oauth2")
                && kw(t, "token") =>
        {
            imds_token(state, r)
        }
        [m, t] if get && kw(m, "msi") && kw(t, "token") => msi_token(state, r),
        [tenant, v, w, o]
            if get && kw(v, "v2.0") && kw(w, ".well-known") && kw(o, "openid-configuration") =>
        {
            openid_configuration(r, tenant, true)
        }
        [tenant, w, o] if get && kw(w, ".well-known") && kw(o, "openid-configuration") => {
            openid_configuration(r, tenant, false)
        }
        [tenant, o, v, t] if post && kw(o, "oauth2") && kw(v, "v2.0") && kw(t, "token") => {
            token(state, r, tenant, true)
        }
        [tenant, o, t] if post && kw(o, "oauth2") && kw(t, "token") => {
            token(state, r, tenant, false)
        }
        _ => return None,
    };
    Some(answer)
}

/// Checks `Authorization: Bearer …` (ARM.md §2.5 for the codes; no `WWW-Authenticate`, which
/// would start the SDKs' claims challenge).
pub(super) fn authenticate(state: &RelayState, r: &ArmRequest) -> Result<(), ArmError> {
    let Some(value) = r.header("authorization") else {
        return Err(ArmError::new(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        ));
    };
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(ArmError::new(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailedInvalidHeader",
            "Authentication failed. The 'Authorization' header is provided in an invalid format.",
        ));
    };
    if state.options.arm.strict_auth {
        verify(token_key(state), token, now(state)).map_err(|why| {
            ArmError::new(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                format!("The access token is invalid: {why}."),
            )
        })?;
    }
    Ok(())
}

/// A JWT (HS256) with the claims Azure's tokens carry (ARM.md §4.1).
fn issue(state: &RelayState, audience: &str, client_id: &str) -> (String, u64) {
    let now = now(state);
    let tenant = &state.options.arm.tenant;
    let oid = hc_protocol::tracking::guid_from_bytes(
        Sha256::digest(client_id.as_bytes())[..16]
            .try_into()
            .unwrap_or_default(),
    );
    let claims = json!({
        "aud": audience,
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": now,
        "nbf": now,
        "exp": now + TOKEN_LIFETIME,
        "appid": client_id,
        "azp": client_id,
        "idtyp": "app",
        "oid": oid,
        "sub": oid,
        "tid": tenant,
        "upn": format!("{client_id}@relay-emulator"),
        "ver": "1.0",
    });
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(mac(token_key(state), &input).finalize().into_bytes());
    (format!("{input}.{signature}"), now + TOKEN_LIFETIME)
}

fn mac(key: &TokenKey, input: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).expect("HMAC takes any key length");
    mac.update(input.as_bytes());
    mac
}

/// Checks a token this relay issued: shape, signature, expiry.
pub(super) fn verify(key: &TokenKey, token: &str, now: u64) -> Result<(), &'static str> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("it is not a JWT");
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "its signature is not base64url")?;
    mac(key, &format!("{header}.{payload}"))
        .verify_slice(&signature)
        .map_err(|_| "it was not issued by this emulator")?;
    let claims: Value = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or("its payload is not JSON")?;
    match claims.get("exp").and_then(Value::as_u64) {
        Some(exp) if exp > now => Ok(()),
        Some(_) => Err("it has expired"),
        None => Err("it has no expiry"),
    }
}

/// `GET /metadata/endpoints`: one cloud object naming this endpoint for everything (what
/// `az cloud register` and Terraform's `metadata_host` read; ARM.md §4.1).
fn metadata(state: &RelayState, r: &ArmRequest) -> ArmResult {
    let base = format!("{}/", r.base);
    let _ = state;
    ok(&json!({
        "name": "RelayEmulator",
        "portal": base,
        "resourceManager": base,
        "authentication": {
            "loginEndpoint": base,
            "audiences": ["https://management.core.windows.net/", "https://management.azure.com/"],
            "tenant": "common",
            "identityProvider": "AAD",
        },
        "microsoftGraphResourceId": base,
        "graph": base,
        "graphAudience": base,
        "media": base,
        "batch": base,
        "sqlManagement": base,
        "vmImageAliasDoc": base,
        "activeDirectoryDataLake": base,
        "appInsightsResourceId": base,
        "appInsightsTelemetryChannelResourceId": base,
        "attestationResourceId": base,
        "synapseAnalyticsResourceId": base,
        "logAnalyticsResourceId": base,
        "ossrDbmsResourceId": base,
        "suffixes": {
            "storage": "core.windows.net",
            "keyVaultDns": "vault.azure.net",
            "sqlServerHostname": "database.windows.net",
            "acrLoginServer": "azurecr.io",
            "azureDatalakeStoreFileSystem": "azuredatalakestore.net",
            "azureDatalakeAnalyticsCatalogAndJob": "azuredatalakeanalytics.net",
            "mhsmDns": "managedhsm.azure.net",
        },
    }))
}

/// OpenID discovery for a tenant (MSAL reads `token_endpoint` and `authorization_endpoint`).
fn openid_configuration(r: &ArmRequest, tenant: &str, v2: bool) -> ArmResult {
    let base = &r.base;
    let (token, authorize) = if v2 {
        ("oauth2/v2.0/token", "oauth2/v2.0/authorize")
    } else {
        ("oauth2/token", "oauth2/authorize")
    };
    ok(&json!({
        "issuer": format!("{base}/{tenant}/v2.0"),
        "token_endpoint": format!("{base}/{tenant}/{token}"),
        "authorization_endpoint": format!("{base}/{tenant}/{authorize}"),
        "device_authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/devicecode"),
        "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
        "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "tenant_region_scope": null,
    }))
}

/// An OAuth error body (`error`, `error_description`), as Entra ID sends it.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> ArmResult {
    Ok(json_response(
        status,
        &json!({"error": error, "error_description": description}),
    ))
}

/// The audience a scope (`{resource}/.default`) or a v1 `resource` names.
fn audience(scope_or_resource: &str) -> String {
    let first = scope_or_resource
        .split_whitespace()
        .find(|s| !matches!(*s, "openid" | "profile" | "offline_access"))
        .unwrap_or("https://management.azure.com/");
    first
        .strip_suffix("/.default")
        .or_else(|| first.strip_suffix(".default"))
        .unwrap_or(first)
        .to_owned()
}

/// `POST /{tenant}/oauth2[/v2.0]/token`: any client id and secret, any scope or resource.
fn token(state: &RelayState, r: &ArmRequest, tenant: &str, v2: bool) -> ArmResult {
    let form = String::from_utf8_lossy(&r.body).into_owned();
    let field = |name: &str| hc_protocol::address::query_value(&form, name);
    let grant = field("grant_type").unwrap_or_default();
    if !matches!(
        grant.as_str(),
        "client_credentials" | "password" | "refresh_token" | "authorization_code"
    ) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!(
                "The emulator issues tokens for client_credentials, password, refresh_token and authorization_code, not '{grant}'."
            ),
        );
    }
    let Some(client_id) = field("client_id").filter(|c| !c.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request body must contain the 'client_id' parameter.",
        );
    };
    let wanted = if v2 {
        field("scope")
    } else {
        field("resource")
    }
    .unwrap_or_default();
    let (token, expires_on) = issue(state, &audience(&wanted), &client_id);
    tracing::debug!(tenant, client_id, "issued a token");
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME - 1,
        "ext_expires_in": TOKEN_LIFETIME - 1,
        "access_token": token,
    });
    if !v2 {
        body["expires_on"] = json!(expires_on.to_string());
        body["resource"] = json!(wanted);
    }
    if grant != "client_credentials" {
        body["refresh_token"] = json!("emulator-refresh-token");
        body["scope"] = json!(wanted);
    }
    ok(&body)
}

/// `GET /msi/token`: App Service's managed-identity protocol (2019-08-01), as
/// `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` make `DefaultAzureCredential` and `az login
/// --identity` use it. Any non-empty `X-IDENTITY-HEADER` is accepted.
fn msi_token(state: &RelayState, r: &ArmRequest) -> ArmResult {
    if r.header("x-identity-header").is_none_or(str::is_empty) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The X-IDENTITY-HEADER header is required (the value of IDENTITY_HEADER).",
        );
    }
    managed_identity_token(state, r)
}

/// `GET /metadata/identity/oauth2/token`: the IMDS form; needs `Metadata: true`.
fn imds_token(state: &RelayState, r: &ArmRequest) -> ArmResult {
    if !r
        .header("metadata")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    managed_identity_token(state, r)
}

fn managed_identity_token(state: &RelayState, r: &ArmRequest) -> ArmResult {
    let Some(resource) = r.query("resource").filter(|v| !v.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The 'resource' query parameter is required.",
        );
    };
    let client_id = r
        .query("client_id")
        .unwrap_or_else(|| "00000000-0000-0000-0000-00000000e001".to_owned());
    let (token, expires_on) = issue(state, &audience(&resource), &client_id);
    ok(&json!({
        "access_token": token,
        "refresh_token": "",
        "expires_in": (TOKEN_LIFETIME - 1).to_string(),
        "expires_on": expires_on.to_string(),
        "not_before": now(state).to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": client_id,
    }))
}

/// `GET /tenants`.
pub(super) fn tenants(state: &RelayState, _r: &ArmRequest) -> ArmResult {
    let tenant = &state.options.arm.tenant;
    super::list(vec![json!({
        "id": format!("/tenants/{tenant}"),
        "tenantId": tenant,
        "tenantCategory": "Home",
        "displayName": "Relay emulator",
        "defaultDomain": "relay-emulator.localhost",
    })])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire_and_only_with_their_key() {
        let key = TokenKey([7; 32]);
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"exp":100}"#);
        let input = format!("{header}.{payload}");
        let sig = URL_SAFE_NO_PAD.encode(mac(&key, &input).finalize().into_bytes());
        let token = format!("{input}.{sig}");
        assert_eq!(verify(&key, &token, 99), Ok(()));
        assert_eq!(verify(&key, &token, 100), Err("it has expired"));
        assert_eq!(
            verify(&TokenKey([8; 32]), &token, 0),
            Err("it was not issued by this emulator")
        );
        assert_eq!(verify(&key, "abc", 0), Err("it is not a JWT"));
        assert_eq!(
            verify(&key, "a.b.c!", 0),
            Err("its signature is not base64url")
        );
    }

    #[test]
    fn audiences_come_from_scopes_and_resources() {
        assert_eq!(
            audience("https://management.core.windows.net//.default"),
            "https://management.core.windows.net/"
        );
        assert_eq!(
            audience("https://management.azure.com/.default offline_access"),
            "https://management.azure.com"
        );
        assert_eq!(
            audience("https://management.azure.com/"),
            "https://management.azure.com/"
        );
        assert_eq!(audience(""), "https://management.azure.com/");
    }
}
