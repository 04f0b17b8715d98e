//! The Hybrid Connection Manager: the listener side of the tunnel, run inside the network
//! that holds the endpoint. It connects outbound only, to the relay, and forwards every
//! relayed connection to one fixed TCP `host:port` per hybrid connection.
//!
//! `config` (connections.json), `status` (status.json and the live board), `worker` (one
//! hybrid connection), `service` (`hcm run`), `cli` (the verbs). The wire work is done by
//! `hc-client`.

pub mod cli;
pub mod config;
pub mod metrics;
pub mod service;
pub mod status;
pub mod worker;

pub use hc_process::write_atomically;
