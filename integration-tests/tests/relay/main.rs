#![allow(clippy::unwrap_used, clippy::expect_used)]

//! The relay emulator driven over real sockets by plain tokio-tungstenite clients (and a raw
//! frame client where tungstenite cannot do what a peer may do). One module per concern.

mod binary;
mod control;
mod data;
mod errors;
mod hardening;
mod namespaces;
mod rendezvous;
