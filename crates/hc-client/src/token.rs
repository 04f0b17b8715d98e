//! SAS tokens for a hybrid connection, made from a connection string's key (audience
//! `http://{host}/{path}/` as the .NET SDK makes it, PROTOCOL.md §3.3) or taken as given.

use std::fmt;
use std::time::Duration;

use hc_protocol::{ConnectionString, Credential, SasKey, SasToken};

use crate::error::{Error, ErrorKind};

/// Makes tokens for one hybrid connection.
#[derive(Clone)]
pub enum TokenProvider {
    /// Signs fresh tokens with a key.
    Key {
        /// Rule name.
        name: String,
        /// The key.
        key: SasKey,
        /// Lifetime of each token.
        ttl: Duration,
    },
    /// A fixed token (dies at its `se`).
    Fixed(String),
    /// No credentials (senders to a hybrid connection without client authorization).
    None,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenProvider::Key { name, ttl, .. } => f
                .debug_struct("Key")
                .field("name", name)
                .field("ttl", ttl)
                .finish_non_exhaustive(),
            TokenProvider::Fixed(_) => f.write_str("Fixed(<redacted>)"),
            TokenProvider::None => f.write_str("None"),
        }
    }
}

/// A token and when it expires.
#[derive(Clone)]
pub struct Token {
    /// The header value (a secret).
    pub text: String,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl TokenProvider {
    /// From a connection string's credential, with `ttl` for key-signed tokens.
    pub fn from_connection_string(cs: &ConnectionString, ttl: Duration) -> Self {
        match &cs.credential {
            Some(Credential::Key { name, key }) => TokenProvider::Key {
                name: name.clone(),
                key: key.clone(),
                ttl,
            },
            Some(Credential::Signature(t)) => TokenProvider::Fixed(t.clone()),
            None => TokenProvider::None,
        }
    }

    /// A token for `host`/`path` valid from `now`; `None` without credentials.
    pub fn token(&self, host: &str, path: &str, now: u64) -> Result<Option<Token>, Error> {
        match self {
            TokenProvider::Key { name, key, ttl } => {
                let expires_at = now + ttl.as_secs().max(1);
                let text =
                    SasToken::create(&format!("http://{host}/{path}/"), name, key, expires_at)
                        .expose();
                Ok(Some(Token { text, expires_at }))
            }
            TokenProvider::Fixed(text) => {
                let parsed = SasToken::parse(text).map_err(|e| {
                    Error::new(
                        ErrorKind::Config,
                        format!("SharedAccessSignature in the connection string: {e}"),
                    )
                })?;
                Ok(Some(Token {
                    text: text.clone(),
                    expires_at: parsed.expiry(),
                }))
            }
            TokenProvider::None => Ok(None),
        }
    }
}
