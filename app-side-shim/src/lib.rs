//! What App Service does for an app, for any program on a developer's machine or a CI runner:
//! a sender library ([`HybridConnection::connect`] -> a byte stream) and a forwarder that makes
//! unchanged programs' TCP connections to an endpoint `host:port` flow through the matching
//! hybrid connection: explicit local listeners, hostname mode (loopback address per endpoint
//! name plus hosts-file entries), and a SOCKS5 / HTTP CONNECT proxy. `tcpping` checks every
//! hop with a real tunnel.

pub mod app;
pub mod cli;
pub mod config;
pub mod forward;
pub mod hosts;
pub mod metrics;
pub mod proxy;
pub mod sender;
pub mod tcpping;

pub use config::{Plan, ShimConfig, Target};
pub use sender::{HybridConnection, RelayStream};
