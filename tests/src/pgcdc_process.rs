//! Runs the real `pgcdc` binary as a child process.
//!
//! ```text
//!  pgcdc ──stdout──▶ reader task ──bounded channel──▶ next_line / collect_lines
//!        ──stderr──▶ reader task ──▶ <tempdir>/stderr.log (+ echo if PGCDC_TEST_ECHO=1)
//! ```

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::cluster::tail_of_file;
use crate::error::{io_err, HarnessError, Result};

/// Stdout lines buffered before the reader task makes pgcdc wait.
const STDOUT_CHANNEL_CAPACITY: usize = 10_000;

/// Path of the `pgcdc` binary: `$PGCDC_BIN`, else next to the test binary's
/// `deps/` directory (`target/<profile>/pgcdc`). Panics with how to build it.
pub fn pgcdc_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PGCDC_BIN") {
        return PathBuf::from(bin);
    }
    let bin = bin_beside(&std::env::current_exe().unwrap_or_default());
    if !bin.is_file() {
        panic!(
            "pgcdc binary not found at {}: run `cargo build -p pgcdc` first (same profile), \
             or set PGCDC_BIN",
            bin.display()
        );
    }
    bin
}

/// `target/<profile>/pgcdc` for a test binary in `target/<profile>/deps/`.
fn bin_beside(test_exe: &Path) -> PathBuf {
    let mut dir = test_exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir.join("pgcdc")
}

/// A running `pgcdc` process; dropping it kills the process.
#[derive(Debug)]
pub struct Pgcdc {
    child: tokio::process::Child,
    pid: u32,
    lines: mpsc::Receiver<String>,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
    _log_dir: tempfile::TempDir,
}

impl Pgcdc {
    /// Spawns `pgcdc ARGS...` with extra environment variables (needs a tokio runtime).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Result<Pgcdc> {
        Self::spawn_bin(&pgcdc_bin(), args, env)
    }

    /// Spawns a specific binary with the same plumbing (for tests of the harness).
    pub fn spawn_bin(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Pgcdc> {
        let log_dir = tempfile::Builder::new()
            .prefix("pgcdc-proc-")
            .tempdir()
            .map_err(io_err("create temp dir", std::env::temp_dir()))?;
        let stderr_path = log_dir.path().join("stderr.log");
        let stderr_file =
            std::fs::File::create(&stderr_path).map_err(io_err("create", &stderr_path))?;

        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            program: bin.display().to_string(),
            source,
        })?;
        let pid = child.id().ok_or_else(|| {
            HarnessError::Environment(format!("{} exited before it had a pid", bin.display()))
        })?;

        let (tx, lines) = mpsc::channel(STDOUT_CHANNEL_CAPACITY);
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout);
                let mut buf = String::new();
                loop {
                    buf.clear();
                    match reader.read_line(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    // Only whole lines count: a process killed mid-write (kill -9)
                    // leaves a fragment without its newline, which no reader would accept.
                    let Some(line) = buf.strip_suffix('\n') else {
                        break;
                    };
                    if tx.send(line.to_string()).await.is_err() {
                        break;
                    }
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let echo = std::env::var_os("PGCDC_TEST_ECHO").is_some_and(|v| v == "1");
            let mut file = tokio::fs::File::from_std(stderr_file);
            tokio::spawn(async move {
                let mut reader = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if echo {
                        eprintln!("[pgcdc {pid}] {line}");
                    }
                    // Flushed per line so stderr_tail sees everything written so far.
                    let written = file.write_all(line.as_bytes()).await.is_ok()
                        && file.write_all(b"\n").await.is_ok()
                        && file.flush().await.is_ok();
                    if !written {
                        break;
                    }
                }
            });
        }
        Ok(Pgcdc {
            child,
            pid,
            lines,
            stderr_path,
            exit: None,
            _log_dir: log_dir,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next stdout line, or `None` on timeout or once stdout is closed and drained.
    pub async fn next_line(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// Up to `n` stdout lines within `timeout` overall; fewer on timeout (callers assert).
    pub async fn collect_lines(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left).await {
                Some(line) => out.push(line),
                None => break,
            }
        }
        out
    }

    /// The last `n` lines pgcdc wrote to stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        tail_of_file(&self.stderr_path, n)
    }

    /// Everything pgcdc wrote to stderr so far.
    pub fn stderr(&self) -> String {
        tail_of_file(&self.stderr_path, usize::MAX)
    }

    /// Path of the stderr log file.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// SIGKILL: a crash with no chance to flush or checkpoint.
    pub fn kill9(&mut self) -> Result<()> {
        self.signal(Signal::SIGKILL)
    }

    /// SIGTERM: the graceful-shutdown path.
    pub fn terminate(&mut self) -> Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// SIGINT (Ctrl-C), which pgcdc should treat like SIGTERM.
    pub fn interrupt(&mut self) -> Result<()> {
        self.signal(Signal::SIGINT)
    }

    fn signal(&mut self, signal: Signal) -> Result<()> {
        if self.exit.is_some() || matches!(self.child.try_wait(), Ok(Some(_))) {
            return Ok(());
        }
        let raw = i32::try_from(self.pid)
            .map_err(|_| HarnessError::Environment(format!("pid {} out of range", self.pid)))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal).map_err(|source| {
            HarnessError::Signal {
                signal: signal.as_str(),
                pid: self.pid,
                source,
            }
        })
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exit {
            return Some(status);
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.exit = Some(status);
                Some(status)
            }
            _ => None,
        }
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
            }
        }
        self.exit.is_some()
    }
}

impl Drop for Pgcdc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- pgcdc (pid {}) stderr tail ---\n{}",
                self.pid,
                self.stderr_tail(40)
            );
        }
        // kill_on_drop also does this; an explicit kill makes it immediate.
        let _ = self.child.start_kill();
    }
}

/// A TOML config written to its own temp file, deleted on drop.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ConfigFile {
    /// Writes `toml` to `<tempdir>/pgcdc.toml`.
    pub fn new(toml: &str) -> Result<ConfigFile> {
        let dir = tempfile::Builder::new()
            .prefix("pgcdc-cfg-")
            .tempdir()
            .map_err(io_err("create temp dir", std::env::temp_dir()))?;
        let path = dir.path().join("pgcdc.toml");
        std::fs::write(&path, toml).map_err(io_err("write", &path))?;
        Ok(ConfigFile { path, _dir: dir })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's path as a string, for `--config`.
    pub fn arg(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Replaces the file's contents (for tests that change config between runs).
    pub fn rewrite(&self, toml: &str) -> Result<()> {
        std::fs::write(&self.path, toml).map_err(io_err("write", &self.path))
    }
}

/// A fresh temp directory for `[state] dir`, deleted on drop.
pub fn state_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("pgcdc-state-")
        .tempdir()
        .map_err(io_err("create temp dir", std::env::temp_dir()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_is_looked_up_in_the_profile_dir_above_deps() {
        let exe = Path::new("/w/target/debug/deps/e2e-0123abcd");
        assert_eq!(bin_beside(exe), Path::new("/w/target/debug/pgcdc"));
        let exe = Path::new("/w/target/release/examples/x");
        assert_eq!(
            bin_beside(exe),
            Path::new("/w/target/release/examples/pgcdc")
        );
    }
}
