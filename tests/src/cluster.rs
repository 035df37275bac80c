//! A throwaway PostgreSQL cluster per test, run from the system's binaries.
//!
//! ```text
//!  tempdir/ ── data/ (initdb)   sock/ (unix socket)   postgres.log   tls/
//!  postmaster = our child process (so kill9 hits exactly it)
//!  readiness  = a connection over the unix socket succeeds (always trust)
//! ```

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::error::{io_err, HarnessError, Result};
use crate::os_user::RunAs;
use crate::tls_certs::{self, TlsFiles};

/// Default location of the PostgreSQL 15 binaries (Debian/Ubuntu layout).
const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long start (including crash recovery) may take.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast or immediate shutdown may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Fresh ports tried when another process grabs the one we picked.
const PORT_ATTEMPTS: u32 = 5;

/// Options for a test cluster; finish with [`PgClusterBuilder::start`].
#[derive(Debug, Clone)]
pub struct PgClusterBuilder {
    settings: Vec<(String, String)>,
    hba_method: String,
    hba_lines: Vec<String>,
    tls: bool,
    bin_dir: Option<PathBuf>,
    version: Option<u32>,
    port: Option<u16>,
}

impl Default for PgClusterBuilder {
    fn default() -> Self {
        Self {
            settings: Vec::new(),
            hba_method: "trust".to_owned(),
            hba_lines: Vec::new(),
            tls: false,
            bin_dir: None,
            version: None,
            port: None,
        }
    }
}

impl PgClusterBuilder {
    /// Adds `key = 'value'` to postgresql.conf (after the harness defaults, so it wins).
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets `wal_sender_timeout` (e.g. short, to test keepalive handling).
    pub fn wal_sender_timeout(self, timeout: Duration) -> Self {
        let ms = timeout.as_millis().to_string();
        self.setting("wal_sender_timeout", &format!("{ms}ms"))
    }

    /// Auth method of the TCP hba lines: `trust`, `password`, `md5` or `scram-sha-256`.
    ///
    /// The unix socket stays `trust`, so [`PgCluster::client`] always works.
    /// With `md5` the passwords are also stored as md5, or Postgres would
    /// silently upgrade the exchange to SCRAM.
    pub fn hba_method(mut self, method: &str) -> Self {
        method.clone_into(&mut self.hba_method);
        self
    }

    /// Adds a raw pg_hba.conf line checked before the default TCP lines.
    pub fn hba_line(mut self, line: &str) -> Self {
        self.hba_lines.push(line.to_owned());
        self
    }

    /// Enables TLS with a generated CA and server certificate (`ssl = on`).
    pub fn tls(mut self, enabled: bool) -> Self {
        self.tls = enabled;
        self
    }

    /// Uses binaries from `dir` instead of `$PG_BIN` or the default.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Uses the binaries of PostgreSQL `major` (see `pg_versions`; 15 is the default).
    pub fn version(mut self, major: u32) -> Self {
        self.version = Some(major);
        self
    }

    /// Listens on `port` (e.g. another, stopped cluster's: a different server behind the same URL).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Creates the cluster (initdb + config) without starting it.
    pub async fn init(self) -> Result<PgCluster> {
        PgCluster::init(self).await
    }

    /// Creates and starts the cluster, returning once it accepts connections.
    pub async fn start(self) -> Result<PgCluster> {
        let mut cluster = PgCluster::init(self).await?;
        cluster.start().await?;
        Ok(cluster)
    }
}

/// A running (or stopped) throwaway Postgres; dropping it stops the server
/// immediately and deletes its files, even when the test panics.
#[derive(Debug)]
pub struct PgCluster {
    dir: Option<tempfile::TempDir>,
    pub(crate) root: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) socket_dir: PathBuf,
    log_path: PathBuf,
    pub(crate) bin_dir: PathBuf,
    port: u16,
    /// Set after the first successful start: restarts must keep the port.
    port_fixed: bool,
    pub(crate) run_as: Option<RunAs>,
    postmaster: Option<Child>,
    tls: Option<TlsFiles>,
}

impl PgCluster {
    /// Options for a new cluster.
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder::default()
    }

    /// A started cluster with the default options (trust auth, no TLS).
    pub async fn new() -> Result<PgCluster> {
        PgClusterBuilder::default().start().await
    }

    async fn init(opts: PgClusterBuilder) -> Result<PgCluster> {
        let bin_dir = match (&opts.bin_dir, opts.version) {
            (Some(dir), _) => dir.clone(),
            (None, Some(major)) => crate::pg_versions::bin_dir(major)?,
            (None, None) => std::env::var_os("PG_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN)),
        };
        if !bin_dir.join("postgres").is_file() {
            return Err(HarnessError::Environment(format!(
                "no postgres binary in {}; install PostgreSQL 15 or set PG_BIN",
                bin_dir.display()
            )));
        }
        let mut cluster = PgCluster::layout(bin_dir)?;
        if let Some(port) = opts.port {
            cluster.port = port;
            cluster.port_fixed = true;
        }
        cluster.initdb().await?;
        if opts.tls {
            cluster.tls =
                Some(tls_certs::generate(&cluster.root.join("tls"), cluster.run_as).await?);
        }
        cluster.write_config(&opts)?;
        Ok(cluster)
    }

    /// A cluster's directories and port, with no data directory yet.
    pub(crate) fn layout(bin_dir: PathBuf) -> Result<PgCluster> {
        let run_as = RunAs::detect()?;
        let dir = tempfile::Builder::new()
            .prefix("pgcdc-pg-")
            .tempdir()
            .map_err(io_err("create temp dir", std::env::temp_dir()))?;
        let root = dir.path().to_path_buf();
        let socket_dir = root.join("sock");
        std::fs::create_dir(&socket_dir).map_err(io_err("create", &socket_dir))?;
        if let Some(user) = run_as {
            user.chown(&root)?;
            user.chown(&socket_dir)?;
        }
        Ok(PgCluster {
            data_dir: root.join("data"),
            log_path: root.join("postgres.log"),
            socket_dir,
            root,
            dir: Some(dir),
            bin_dir,
            port: free_port()?,
            port_fixed: false,
            run_as,
            postmaster: None,
            tls: None,
        })
    }

    async fn initdb(&self) -> Result<()> {
        let mut cmd = self.pg_command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .args(["--locale=C", "--no-instructions"]);
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .map_err(|source| HarnessError::Spawn {
                program: "initdb".to_owned(),
                source,
            })?;
        if !out.status.success() {
            return Err(HarnessError::Command {
                program: "initdb".to_owned(),
                status: out.status,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(())
    }

    fn write_config(&self, opts: &PgClusterBuilder) -> Result<()> {
        let mut conf = String::from("\n# --- pgcdc test harness ---\n");
        let mut set = |k: &str, v: &str| {
            conf.push_str(&format!("{k} = {}\n", quote_literal(v)));
        };
        set("listen_addresses", "127.0.0.1");
        set(
            "unix_socket_directories",
            &self.socket_dir.to_string_lossy(),
        );
        set("wal_level", "logical");
        set("max_wal_senders", "10");
        set("max_replication_slots", "10");
        // Tests crash the server process, never the OS: page cache survives.
        set("fsync", "off");
        set("shared_buffers", "32MB");
        set("max_connections", "50");
        set("log_connections", "on");
        set("log_replication_commands", "on");
        if opts.hba_method == "md5" {
            set("password_encryption", "md5");
        }
        if let Some(tls) = &self.tls {
            set("ssl", "on");
            set("ssl_cert_file", &tls.server_cert.to_string_lossy());
            set("ssl_key_file", &tls.server_key.to_string_lossy());
            set("ssl_ca_file", &tls.ca_cert.to_string_lossy());
        }
        for (k, v) in &opts.settings {
            set(k, v);
        }
        let conf_path = self.data_dir.join("postgresql.conf");
        let mut existing =
            std::fs::read_to_string(&conf_path).map_err(io_err("read", &conf_path))?;
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).map_err(io_err("write", &conf_path))?;

        let m = &opts.hba_method;
        let mut hba = String::from("local all all trust\nlocal replication all trust\n");
        for line in &opts.hba_lines {
            hba.push_str(line);
            hba.push('\n');
        }
        for db in ["all", "replication"] {
            for net in ["127.0.0.1/32", "::1/128"] {
                hba.push_str(&format!("host {db} all {net} {m}\n"));
            }
        }
        let hba_path = self.data_dir.join("pg_hba.conf");
        std::fs::write(&hba_path, hba).map_err(io_err("write", &hba_path))
    }

    /// A `std` command for a Postgres binary, run as the server's OS user.
    fn pg_command(&self, program: &str) -> std::process::Command {
        self.command_as_server(self.bin_dir.join(program))
    }

    /// A `std` command for any program, run as the server's OS user.
    pub(crate) fn command_as_server(&self, program: impl AsRef<Path>) -> std::process::Command {
        let mut cmd = std::process::Command::new(program.as_ref());
        if let Some(user) = self.run_as {
            user.apply(&mut cmd);
        }
        cmd
    }

    /// Starts the server (after `init`, `stop` or `kill9`) and waits until it
    /// accepts connections; crash recovery after `kill9` happens here.
    pub async fn start(&mut self) -> Result<()> {
        if self.postmaster.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let mut port_attempts = 1;
        loop {
            let log_offset = std::fs::metadata(&self.log_path).map_or(0, |m| m.len());
            let child = self.spawn_postmaster()?;
            self.postmaster = Some(child);
            let failure = match self.wait_ready(deadline).await {
                Ok(()) => {
                    self.port_fixed = true;
                    return Ok(());
                }
                Err(failure) => failure,
            };
            let new_log = self.log_since(log_offset);
            match failure {
                StartFailure::Exited(status) => {
                    self.postmaster = None;
                    let port_taken = new_log.contains("could not bind")
                        || new_log.contains("could not create any TCP/IP sockets");
                    // After kill9, orphaned backends may briefly keep the old
                    // shared memory attached; they exit on postmaster death.
                    let old_still_alive = new_log.contains("is still in use")
                        || new_log.contains("another postmaster");
                    if port_taken && !self.port_fixed && port_attempts < PORT_ATTEMPTS {
                        port_attempts += 1;
                        self.port = free_port()?;
                        continue;
                    }
                    if (port_taken || old_still_alive) && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    return Err(self.startup_error(format!("postmaster exited with {status}")));
                }
                StartFailure::Timeout(last) => {
                    self.kill_postmaster(Signal::SIGKILL);
                    return Err(self.startup_error(format!(
                        "not ready within {}s (last connection error: {last})",
                        START_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }

    fn spawn_postmaster(&self) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io_err("open", &self.log_path))?;
        let log_err = log.try_clone().map_err(io_err("dup", &self.log_path))?;
        let mut cmd = self.pg_command("postgres");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        cmd.spawn().map_err(|source| HarnessError::Spawn {
            program: "postgres".to_owned(),
            source,
        })
    }

    async fn wait_ready(&mut self, deadline: Instant) -> Result<(), StartFailure> {
        loop {
            if let Some(child) = self.postmaster.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(StartFailure::Exited(status));
                }
            }
            let last = match self.socket_config().connect(tokio_postgres::NoTls).await {
                Ok((client, conn)) => {
                    drop(client);
                    drop(conn);
                    return Ok(());
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(StartFailure::Timeout(last));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn startup_error(&self, reason: String) -> HarnessError {
        HarnessError::Startup {
            reason,
            log_tail: self.log_tail(40),
        }
    }

    fn log_since(&self, offset: u64) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                // A half-written line is fine: we only search for phrases.
                let _ = f.read_to_string(&mut text);
            }
        }
        text
    }

    /// Fast shutdown (SIGINT): clients are disconnected, a checkpoint is written.
    pub async fn stop(&mut self) -> Result<()> {
        self.signal_and_wait(Signal::SIGINT).await
    }

    /// Stops (fast) and starts again on the same port and data directory.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.start().await
    }

    /// SIGKILLs the postmaster: an immediate crash; the next `start` recovers.
    pub async fn kill9(&mut self) -> Result<()> {
        self.signal_and_wait(Signal::SIGKILL).await
    }

    async fn signal_and_wait(&mut self, signal: Signal) -> Result<()> {
        let Some(child) = self.postmaster.as_mut() else {
            return Ok(());
        };
        let pid = child.id();
        send_signal(pid, signal)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    return Err(HarnessError::Shutdown {
                        pid,
                        secs: STOP_TIMEOUT.as_secs(),
                    })
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        self.postmaster = None;
        Ok(())
    }

    /// Synchronous stop for Drop: signal, wait a bounded time, then SIGKILL.
    fn kill_postmaster(&mut self, signal: Signal) {
        let Some(mut child) = self.postmaster.take() else {
            return;
        };
        let _ = send_signal(child.id(), signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the harness believes the postmaster is running.
    pub fn is_running(&self) -> bool {
        self.postmaster.is_some()
    }

    /// The postmaster's pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.as_ref().map(Child::id)
    }

    /// TCP port on 127.0.0.1 (stable across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable`.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// URL for `user`/`password` (empty = none) on database `db`, TLS disabled.
    pub fn url_for(&self, user: &str, password: &str, db: &str) -> String {
        self.url_with_params(user, password, db, "sslmode=disable")
    }

    /// URL for `user`/`password` on `db` with a raw query string (`sslmode=require&...`).
    pub fn url_with_params(&self, user: &str, password: &str, db: &str, params: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}?{params}",
            userinfo(user, password),
            self.port,
            pct_encode(db)
        )
    }

    /// URL requiring TLS verified against [`PgCluster::ca_cert_path`]
    /// (`sslmode=verify-full&sslrootcert=...`; the cert's SAN has `127.0.0.1`).
    pub fn tls_url_for(&self, user: &str, password: &str, db: &str) -> Option<String> {
        let ca = pct_encode(&self.ca_cert_path()?.to_string_lossy());
        Some(self.url_with_params(
            user,
            password,
            db,
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ))
    }

    /// The CA certificate clients should trust (TLS clusters only).
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_cert.as_path())
    }

    /// A client certificate (CN `pgcdc-client`) and its key, signed by the cluster's CA
    /// (TLS clusters only), for `clientcert=verify-full` in pg_hba.conf.
    pub fn client_cert_paths(&self) -> Option<(&Path, &Path)> {
        self.tls
            .as_ref()
            .map(|t| (t.client_cert.as_path(), t.client_key.as_path()))
    }

    /// The server certificate (TLS clusters only).
    pub fn server_cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.server_cert.as_path())
    }

    /// The data directory (PGDATA).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `n` lines of the server log, for assertion messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail_of_file(&self.log_path, n)
    }

    fn socket_config(&self) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&self.socket_dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5));
        cfg
    }

    /// A superuser client over the unix socket (works with any hba method).
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        self.client_db("postgres").await
    }

    /// A superuser client on database `db` over the unix socket.
    pub async fn client_db(&self, db: &str) -> Result<tokio_postgres::Client> {
        let (client, conn) = self
            .socket_config()
            .dbname(db)
            .connect(tokio_postgres::NoTls)
            .await?;
        spawn_connection(conn);
        Ok(client)
    }

    /// A client over TCP as `user` (no TLS): exercises pg_hba.conf.
    pub async fn client_tcp(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client> {
        let (client, conn) =
            tokio_postgres::connect(&self.url_for(user, password, db), tokio_postgres::NoTls)
                .await?;
        spawn_connection(conn);
        Ok(client)
    }

    /// A client over TLS (rustls, verifying the harness CA and `127.0.0.1`).
    pub async fn client_tls(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client> {
        let ca = self
            .ca_cert_path()
            .ok_or_else(|| HarnessError::Tls("cluster was built without .tls(true)".to_owned()))?;
        let tls = crate::tls_client::make_connector(ca)?;
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port)
            .user(user)
            .dbname(db)
            .ssl_mode(tokio_postgres::config::SslMode::Require)
            .connect_timeout(Duration::from_secs(10));
        if !password.is_empty() {
            cfg.password(password);
        }
        let (client, conn) = cfg.connect(tls).await?;
        spawn_connection(conn);
        Ok(client)
    }

    /// Runs one statement as superuser; returns the affected row count.
    pub async fn execute(&self, sql: &str) -> Result<u64> {
        Ok(self.client().await?.execute(sql, &[]).await?)
    }

    /// Runs several `;`-separated statements as superuser (simple protocol).
    pub async fn batch(&self, sql: &str) -> Result<()> {
        Ok(self.client().await?.batch_execute(sql).await?)
    }

    /// Runs a query returning one row of one column, as superuser.
    pub async fn query_scalar<T>(&self, sql: &str) -> Result<T>
    where
        T: for<'a> tokio_postgres::types::FromSql<'a>,
    {
        Ok(self.client().await?.query_one(sql, &[]).await?.try_get(0)?)
    }

    /// Creates a login role with a password, optionally with REPLICATION.
    pub async fn create_user(&self, name: &str, password: &str, replication: bool) -> Result<()> {
        let repl = if replication { " REPLICATION" } else { "" };
        self.batch(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {}{repl}",
            quote_ident(name),
            quote_literal(password)
        ))
        .await
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // SIGQUIT = immediate shutdown: nothing to preserve in a throwaway cluster.
        self.kill_postmaster(Signal::SIGQUIT);
        if std::thread::panicking() {
            eprintln!(
                "--- postgres log tail ({}) ---\n{}",
                self.log_path.display(),
                self.log_tail(40)
            );
        }
        if std::env::var_os("PGCDC_TEST_KEEP").is_some_and(|v| v == "1") {
            if let Some(dir) = self.dir.take() {
                eprintln!("PGCDC_TEST_KEEP=1: keeping {}", dir.keep().display());
            }
        }
    }
}

enum StartFailure {
    Exited(std::process::ExitStatus),
    Timeout(String),
}

/// A port on 127.0.0.1 that was free a moment ago (bind port 0, read, drop).
pub fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("bind", "127.0.0.1:0"))?;
    let addr = listener
        .local_addr()
        .map_err(io_err("local_addr", "127.0.0.1:0"))?;
    Ok(addr.port())
}

fn send_signal(pid: u32, signal: Signal) -> Result<()> {
    let raw = i32::try_from(pid)
        .map_err(|_| HarnessError::Environment(format!("pid {pid} out of range")))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal).map_err(|source| {
        HarnessError::Signal {
            signal: signal.as_str(),
            pid,
            source,
        }
    })
}

fn spawn_connection<S, T>(conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio_postgres::tls::TlsStream + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        // Errors here surface on the Client's next call; nothing else to do.
        let _ = conn.await;
    });
}

/// The last `n` lines of a text file ("" when it cannot be read).
pub(crate) fn tail_of_file(path: &Path, n: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn userinfo(user: &str, password: &str) -> String {
    if password.is_empty() {
        pct_encode(user)
    } else {
        format!("{}:{}", pct_encode(user), pct_encode(password))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn pct_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// SQL quoting: the engine's own helpers (`"a""b"`, `'it''s'`).
pub use pgcdc_schema::{quote_ident, quote_literal};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pct_encode_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(pct_encode("a-b.c_d~9"), "a-b.c_d~9");
        assert_eq!(pct_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
