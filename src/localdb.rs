//! A private PostgreSQL cluster run from the machine's own PostgreSQL binaries: for local
//! mode (no `DATABASE_URL`) and for tests that need a server they may restart.
//!
//! Postgres refuses to run as root, so when we are root the cluster's files belong to an
//! unprivileged account (`postgres` if the package created it, else `nobody`) and every
//! server command runs as that account through `runuser`.
//!
//! That account must be able to reach the data directory. Root's home is mode 700 on most
//! systems and containers, so a cluster under `/root/.local/share` cannot work: when the
//! account cannot traverse to the requested directory, the cluster lives in a directory of its
//! own under [`RELOCATED_BASE`] instead, named after the requested path (one cluster per
//! requested directory, as before). We never loosen the permissions of the user's home: an
//! `o+x` would open it to every account, and an ACL needs tools the machine may lack.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Why the cluster could not be set up or controlled.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `initdb`/`pg_ctl` was found.
    #[error(
        "no PostgreSQL server binaries found (looked for pg_ctl in PATH, pg_config --bindir and /usr/lib/postgresql/*/bin): install PostgreSQL (e.g. `apt-get install postgresql`) or set DATABASE_URL"
    )]
    NoBinaries,
    /// A command failed.
    #[error("{command} failed: {output}")]
    Command {
        /// What ran.
        command: String,
        /// What it printed.
        output: String,
    },
    /// Filesystem or process error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A cluster in a directory of its own, listening on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Cluster {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    /// The directory asked for, when `data_dir` had to be elsewhere.
    requested: Option<PathBuf>,
    port: u16,
    /// The account that owns and runs the server when we are root.
    run_as: Option<String>,
}

/// The database and role every local cluster gets.
pub const DATABASE: &str = "reviewq";

/// Where a root-run cluster lives when the server's account cannot reach the requested
/// directory: the conventional place for a system service's state.
pub const RELOCATED_BASE: &str = "/var/lib/reviewq";

fn find_bin_dir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some(newest) = versions.pop() {
        return Some(newest);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn account_exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `user` can traverse to `dir`: checked on its nearest existing ancestor (the rest is
/// created by us with the usual umask, then handed to `user`).
fn reachable_by(user: &str, dir: &Path) -> bool {
    let Some(existing) = dir.ancestors().find(|d| d.exists()) else {
        return false;
    };
    Command::new("runuser")
        .args(["-u", user, "--", "test", "-x"])
        .arg(existing)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The directory a cluster requested at `dir` lives in when `dir` is out of the server
/// account's reach: stable for the same request, distinct for different ones.
fn relocated(dir: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Path::new(RELOCATED_BASE).join(name)
}

/// A port that is free now and that the kernel will not hand out on its own.
///
/// Why not port 0: that picks from the ephemeral range, which every outgoing connection and
/// every `bind(0)` listener on the machine (the tests' simulators, for one) draws from too, so
/// between our probe and the server's bind — or across a restart — another socket can take it.
/// Below the ephemeral range only an explicit bind can collide, and the probe catches that.
fn free_port() -> Result<u16, Error> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 20_000u16.min(ephemeral_low.saturating_sub(1000));
    let span = u32::from(ephemeral_low.saturating_sub(low)).max(1);
    // Spread concurrent callers (parallel tests, each with its own cluster) over the range.
    let start = uuid::Uuid::new_v4().as_u128() as u32 % span;
    for offset in 0..span {
        let port = low + ((start + offset) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `pg_ctl` only says "could not start server"; the reason is in the server's log.
fn with_log_tail(error: Error, log: &Path) -> Error {
    let Error::Command { command, output } = error else {
        return error;
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    Error::Command {
        command,
        output: format!("{output}\n--- last lines of {} ---\n{tail}", log.display()),
    }
}

impl Cluster {
    /// A cluster in `data_dir` (created on [`Cluster::start`] if missing), or, when we are root
    /// and the server's account cannot reach `data_dir`, in a directory under
    /// [`RELOCATED_BASE`] ([`Cluster::data_dir`] says which). The port is remembered in the
    /// directory, so a reused cluster keeps its address.
    ///
    /// # Errors
    /// [`Error::NoBinaries`] when PostgreSQL is not installed.
    pub fn new(data_dir: &Path) -> Result<Self, Error> {
        let bin_dir = find_bin_dir().ok_or(Error::NoBinaries)?;
        let run_as = is_root().then(|| {
            if account_exists("postgres") {
                "postgres".to_owned()
            } else {
                "nobody".to_owned()
            }
        });
        let (data_dir, requested) = match &run_as {
            Some(user) if !reachable_by(user, data_dir) => {
                (relocated(data_dir), Some(data_dir.to_owned()))
            }
            _ => (data_dir.to_owned(), None),
        };
        let port_file = data_dir.join("reviewq.port");
        let port = match std::fs::read_to_string(&port_file) {
            Ok(p) => p.trim().parse().unwrap_or(0),
            Err(_) => 0,
        };
        let port = if port == 0 { free_port()? } else { port };
        Ok(Self {
            bin_dir,
            data_dir,
            requested,
            port,
            run_as,
        })
    }

    /// The URL of the cluster's `reviewq` database.
    pub fn url(&self) -> String {
        format!("postgres://{DATABASE}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The directory the cluster lives in (see [`Cluster::new`] for when it is not the one
    /// requested).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory that was asked for, when the server's account could not reach it and the
    /// cluster lives in [`Cluster::data_dir`] instead.
    pub fn relocated_from(&self) -> Option<&Path> {
        self.requested.as_deref()
    }

    /// The account that runs the server, when we are root.
    pub fn server_account(&self) -> Option<&str> {
        self.run_as.as_deref()
    }

    fn pgdata(&self) -> PathBuf {
        self.data_dir.join("pgdata")
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, Error> {
        let binary = self.bin_dir.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        let out = cmd
            .args(args)
            .current_dir(&self.data_dir)
            .stdin(Stdio::null())
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(Error::Command {
                command: format!("{program} {}", args.join(" ")),
                output: text.trim().to_owned(),
            })
        }
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        let pgdata = self.pgdata();
        self.run("pg_ctl", &["status", "-D", &pgdata.to_string_lossy()])
            .is_ok()
    }

    /// Creates the cluster if needed and starts it if it is not running.
    ///
    /// # Errors
    /// Command failures (with their output).
    pub fn start(&self) -> Result<(), Error> {
        std::fs::create_dir_all(&self.data_dir)?;
        if self.requested.is_some() {
            // Created with the caller's umask, which may be 077: the server's account must be
            // able to pass through the base to reach its own directory.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(RELOCATED_BASE, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::write(self.data_dir.join("reviewq.port"), self.port.to_string())?;
        if let Some(user) = &self.run_as {
            let status = Command::new("chown")
                .args(["-R", &format!("{user}:"), &self.data_dir.to_string_lossy()])
                .status()?;
            if !status.success() {
                return Err(Error::Command {
                    command: "chown".into(),
                    output: format!("could not hand {} to {user}", self.data_dir.display()),
                });
            }
        }
        let pgdata = self.pgdata();
        let pgdata_s = pgdata.to_string_lossy().into_owned();
        if !pgdata.join("PG_VERSION").exists() {
            self.run(
                "initdb",
                &[
                    "-D",
                    &pgdata_s,
                    "-U",
                    DATABASE,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
            )?;
        }
        if !self.is_running() {
            let options = format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=on",
                self.port,
                self.data_dir.to_string_lossy()
            );
            let log = self.data_dir.join("server.log");
            self.run(
                "pg_ctl",
                &[
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    &pgdata_s,
                    "-l",
                    &log.to_string_lossy(),
                    "-o",
                    &options,
                ],
            )
            .map_err(|e| with_log_tail(e, &log))?;
        }
        // The database may be missing on first start; creating it twice is harmless.
        let _ = self.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                DATABASE,
                DATABASE,
            ],
        );
        Ok(())
    }

    /// Stops the server (fast shutdown: open sessions are disconnected).
    ///
    /// # Errors
    /// Command failures.
    pub fn stop(&self) -> Result<(), Error> {
        if !self.is_running() {
            return Ok(());
        }
        let pgdata = self.pgdata();
        self.run(
            "pg_ctl",
            &["stop", "-w", "-m", "fast", "-D", &pgdata.to_string_lossy()],
        )
        .map(drop)
    }

    /// Restarts the server, as an operator or a crash-and-recover would.
    ///
    /// # Errors
    /// Command failures.
    pub fn restart(&self) -> Result<(), Error> {
        self.stop()?;
        self.start()
    }
}
