//! One opaque error with predicates, so callers can tell the cases apart without matching on
//! internals: no listener, endpoint does not exist, unauthorized, rejected by the listener,
//! timeout, network, protocol, configuration.

use std::fmt;

/// What kind of failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// 404 `Endpoint does not exist`: the hybrid connection is not there.
    EndpointNotFound,
    /// 404 `There are no listeners connected for the endpoint`.
    NoListener,
    /// 401 or 403: token refused or right missing.
    Unauthorized,
    /// 403 `QuotaExceeded`: the namespace or hybrid connection has no room now (too many
    /// listeners or connections); transient.
    QuotaExceeded,
    /// The listener (or relay) refused with this status.
    Rejected(u16),
    /// A deadline passed (connect timeout, 408/504 from the relay).
    Timeout,
    /// The relay could not be reached or the connection broke.
    Network,
    /// The peer broke the protocol.
    Protocol,
    /// Bad configuration (connection string, CA file, address).
    Config,
}

/// A client-side failure with a message for people.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    status: Option<u16>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            status: None,
        }
    }

    /// The error for a failed WebSocket upgrade with this status and reason phrase (§9.1).
    pub fn from_status(what: &str, status: u16, reason: &str) -> Self {
        let kind = match status {
            404 if reason.starts_with("There are no listeners") => ErrorKind::NoListener,
            404 => ErrorKind::EndpointNotFound,
            403 if reason.contains("QuotaExceeded") => ErrorKind::QuotaExceeded,
            401 | 403 => ErrorKind::Unauthorized,
            408 | 504 => ErrorKind::Timeout,
            s => ErrorKind::Rejected(s),
        };
        Error {
            kind,
            message: format!("{what}: {status} {reason}"),
            status: Some(status),
        }
    }

    /// The kind.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// HTTP status from the relay, if the failure came with one.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The hybrid connection does not exist.
    pub fn is_endpoint_not_found(&self) -> bool {
        self.kind == ErrorKind::EndpointNotFound
    }

    /// No listener is connected.
    pub fn is_no_listener(&self) -> bool {
        self.kind == ErrorKind::NoListener
    }

    /// The token was refused.
    pub fn is_unauthorized(&self) -> bool {
        self.kind == ErrorKind::Unauthorized
    }

    /// The listener rejected the connection.
    pub fn is_rejected(&self) -> bool {
        matches!(self.kind, ErrorKind::Rejected(_))
    }

    /// The relay has no room for another listener or connection now (403 `QuotaExceeded`).
    pub fn is_quota_exceeded(&self) -> bool {
        self.kind == ErrorKind::QuotaExceeded
    }

    /// A deadline passed.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    /// The network failed.
    pub fn is_network(&self) -> bool {
        self.kind == ErrorKind::Network
    }

    /// Retrying cannot help: the entity is gone or the credentials are wrong (§5.5: SDKs stop
    /// reconnecting on 404; we stop on 401 and on a 403 for a missing right too). A quota
    /// 403 is not permanent: room comes back when other connections end.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::EndpointNotFound | ErrorKind::Unauthorized | ErrorKind::Config
        )
    }

    /// Prefixes the message with context.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        let kind = if e.kind() == std::io::ErrorKind::TimedOut {
            ErrorKind::Timeout
        } else {
            ErrorKind::Network
        };
        Error::new(kind, e.to_string())
    }
}

impl From<hc_ws::ReadError> for Error {
    fn from(e: hc_ws::ReadError) -> Self {
        match e {
            hc_ws::ReadError::Io(io) => io.into(),
            hc_ws::ReadError::UnexpectedEof => Error::new(ErrorKind::Network, e.to_string()),
            other => Error::new(ErrorKind::Protocol, other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds() {
        assert!(
            Error::from_status(
                "connect",
                404,
                "There are no listeners connected for the endpoint. TrackingId:x"
            )
            .is_no_listener()
        );
        assert!(
            Error::from_status("connect", 404, "Endpoint does not exist.").is_endpoint_not_found()
        );
        assert!(Error::from_status("connect", 403, "nope").is_unauthorized());
        assert!(Error::from_status("connect", 504, "slow").is_timeout());
        let e = Error::from_status("connect", 502, "Endpoint db:5432 unreachable");
        assert!(e.is_rejected() && e.status() == Some(502) && e.to_string().contains("db:5432"));
        assert!(Error::from_status("listen", 401, "x").is_permanent() && !e.is_permanent());
        let quota = Error::from_status(
            "listen",
            403,
            "QuotaExceeded: MaximumListenersPerEndpoint: the hybrid connection already has 25 listeners.",
        );
        assert!(
            quota.is_quota_exceeded() && !quota.is_unauthorized() && !quota.is_permanent(),
            "{quota}"
        );
        assert!(
            Error::from_status(
                "listen",
                403,
                "Unauthorized access. 'Listen' claim(s) are required"
            )
            .is_permanent()
        );
    }
}
