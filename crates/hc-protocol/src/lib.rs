//! Pure Azure Relay Hybrid Connections protocol code, shared by the relay emulator, the HCM
//! and the app-side shim.
//!
//! Nothing here performs I/O or reads a clock: every function that needs "now" takes it as a
//! parameter, and randomness comes in as bytes. The wire reference is `shared/PROTOCOL.md`;
//! each module names the section it implements.
//!
//! Neighbours: `relay-server` uses this crate directly; `hc-client` (client side of hcm and
//! the shim) builds its sockets on it.

pub mod address;
pub mod auth;
pub mod connection_string;
pub mod control;
pub mod frame;
pub mod limits;
pub mod metadata;
pub mod runtime_info;
pub mod sas;
pub mod tracking;
pub mod uri;

pub use auth::{AuthError, AuthRule, AuthScope, Authorized, Right, Rights};
pub use connection_string::{ConnectionString, ConnectionStringError, Credential};
pub use sas::{SasKey, SasToken, TokenError};
