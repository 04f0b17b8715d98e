//! What `up` and `bench` share with the tests: child processes of the workspace's binaries
//! ([`procs`]), the three of them started as a chain ([`chain`]), TCP servers as tunnel
//! endpoints ([`servers`]), and other tunnels as benchmark references ([`peers`]).

pub mod chain;
pub mod peers;
pub mod procs;
pub mod servers;
