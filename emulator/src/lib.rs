//! What `up` and `bench` share with the tests: child processes of the workspace's binaries
//! ([`procs`]), the three of them started as a chain ([`chain`]), and TCP servers as tunnel
//! endpoints ([`servers`]).

pub mod chain;
pub mod procs;
pub mod servers;
