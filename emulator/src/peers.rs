//! Other tunnels as in-run references for `bench` (PEERS.md): bore, rathole and wstunnel,
//! each started on loopback in front of the benchmark's server when its binary is on `PATH`
//! (`cargo install bore-cli rathole`; wstunnel is not in the crates registry). Each peer is
//! two processes, a server and a client, killed when the [`Peer`] drops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A running peer tunnel.
#[derive(Debug)]
pub struct Peer {
    /// Where clients connect: the far end forwards to the server.
    pub addr: SocketAddr,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Peer {
    /// Process ids of its server and client.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

/// The peers `bench` knows, by name.
pub const NAMES: [&str; 3] = ["bore", "rathole", "wstunnel"];

/// `name` on `PATH`, else where `cargo install` puts it.
fn find(name: &str) -> Option<PathBuf> {
    crate::procs::on_path(name).or_else(|| {
        let p = PathBuf::from(std::env::var_os("HOME")?)
            .join(".cargo/bin")
            .join(name);
        p.is_file().then_some(p)
    })
}

/// A port free now on 127.0.0.1 (the peers take ports on their command lines).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(bin: &PathBuf, args: &[&str]) -> anyhow::Result<Child> {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// Starts peer `name` in front of `server`; `None` when its binary is not installed.
pub async fn start(name: &str, server: SocketAddr) -> anyhow::Result<Option<Peer>> {
    let Some(bin) = find(name) else {
        return Ok(None);
    };
    let dir = tempfile::tempdir()?;
    let public = free_port()?;
    let control = free_port()?;
    let target = server.to_string();
    let children = match name {
        // bore's control port is fixed (7835); the client asks for the public port.
        "bore" => {
            let s = spawn(
                &bin,
                &[
                    "server",
                    "--bind-addr",
                    "127.0.0.1",
                    "--min-port",
                    &public.to_string(),
                    "--max-port",
                    &public.to_string(),
                ],
            )?;
            let local = server.port().to_string();
            let port = public.to_string();
            let mut children = vec![s];
            wait_listening(SocketAddr::from(([127, 0, 0, 1], 7835))).await?;
            children.push(spawn(
                &bin,
                &[
                    "local",
                    &local,
                    "--local-host",
                    "127.0.0.1",
                    "--to",
                    "127.0.0.1",
                    "--port",
                    &port,
                ],
            )?);
            children
        }
        "rathole" => {
            let server_toml = dir.path().join("server.toml");
            let client_toml = dir.path().join("client.toml");
            std::fs::write(
                &server_toml,
                format!(
                    "[server]\nbind_addr = \"127.0.0.1:{control}\"\n[server.services.bench]\ntoken = \"bench\"\nbind_addr = \"127.0.0.1:{public}\"\n"
                ),
            )?;
            std::fs::write(
                &client_toml,
                format!(
                    "[client]\nremote_addr = \"127.0.0.1:{control}\"\n[client.services.bench]\ntoken = \"bench\"\nlocal_addr = \"{target}\"\n"
                ),
            )?;
            let s = spawn(&bin, &["--server", &server_toml.to_string_lossy()])?;
            let c = spawn(&bin, &["--client", &client_toml.to_string_lossy()])?;
            vec![s, c]
        }
        "wstunnel" => {
            let s = spawn(&bin, &["server", &format!("ws://127.0.0.1:{control}")])?;
            wait_listening(SocketAddr::from(([127, 0, 0, 1], control))).await?;
            let c = spawn(
                &bin,
                &[
                    "client",
                    "-L",
                    &format!("tcp://127.0.0.1:{public}:{target}"),
                    &format!("ws://127.0.0.1:{control}"),
                ],
            )?;
            vec![s, c]
        }
        other => bail!("unknown peer '{other}'"),
    };
    let peer = Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], public)),
        children,
        _dir: dir,
    };
    wait_echo(peer.addr)
        .await
        .with_context(|| format!("{name} did not start forwarding"))?;
    Ok(Some(peer))
}

/// Waits until `addr` accepts connections (10 s at most).
async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until a byte sent to the bench server's echo through `addr` comes back (10 s at
/// most): the tunnel is up end to end.
async fn wait_echo(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(b"Ex").await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(1), attempt).await {
            Ok(Ok(())) => return Ok(()),
            _ if Instant::now() > deadline => bail!("no echo through {addr} within 10 s"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
