//! Real servers from Debian's packages as tunnel endpoints: Redis and PostgreSQL. Tests that
//! use them are ignored by default (`cargo test -- --include-ignored` runs them; CI does).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use hc_emulator::procs::{Proc, path};

/// A Redis server from Debian's `redis-server` on a free port, without persistence.
pub fn redis(dir: &Path) -> anyhow::Result<(Proc, u16)> {
    let port = free_port();
    let (p, _) = Proc::start(
        Path::new("redis-server"),
        &[
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            path(dir),
        ],
        dir.join("redis.log"),
        Some("Ready to accept connections"),
    )
    .context("redis-server is needed (Debian package redis-server)")?;
    Ok((p, port))
}

/// A free TCP port on 127.0.0.1, for servers that cannot report the one they bound.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A PostgreSQL cluster from Debian's `postgresql` (trust auth, user `postgres`) on a free
/// port; stopped when dropped. As root it runs as the `postgres` user.
#[derive(Debug)]
pub struct Postgres {
    /// The port.
    pub port: u16,
    data: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

impl Postgres {
    /// initdb + pg_ctl start (waits until it accepts connections).
    pub fn start(dir: &Path) -> anyhow::Result<Postgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL is needed (Debian package postgresql)")?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|b| b.join("initdb").exists())
            .context("no initdb under /usr/lib/postgresql")?;
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data)?;
        let as_postgres = nix_is_root();
        if as_postgres {
            chown_to_postgres(dir)?;
            chown_to_postgres(&data)?;
        }
        let port = free_port();
        let pg = Postgres {
            port,
            data,
            bin,
            as_postgres,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                path(&pg.data),
                "--auth=trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            path(&pg.data)
        );
        pg.run(
            "pg_ctl",
            &[
                "-D",
                path(&pg.data),
                "-o",
                &options,
                "-l",
                path(&pg.data.join("server.log")),
                "-w",
                "start",
            ],
        )?;
        Ok(pg)
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(tool);
        let out = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--", path(&program)])
                .args(args)
                .output()?
        } else {
            Command::new(&program).args(args).output()?
        };
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["-D", path(&self.data), "-m", "immediate", "stop"],
        );
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chown_to_postgres(p: &Path) -> anyhow::Result<()> {
    let ok = Command::new("chown")
        .args(["postgres:postgres", path(p)])
        .status()?
        .success();
    if !ok {
        bail!("cannot chown {} to postgres", p.display());
    }
    Ok(())
}
