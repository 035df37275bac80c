//! The admin token: `admin.token` when configured, otherwise one pgcdc generates
//! at its first start into `state.dir/admin.token`, readable by its owner only.
//!
//! So mutations are always authenticated: whoever can read the state directory
//! (the user pgcdc runs as, root) can act, anyone else on the machine or a web
//! page in the operator's browser cannot. `pgcdc admin-token` prints it.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{Config, Secret};

/// The file's name inside `state.dir`.
pub(crate) const FILE: &str = "admin.token";
/// Random bytes in a generated token (hex-encoded: 64 characters).
const TOKEN_BYTES: usize = 32;
/// A token file larger than this is not one pgcdc wrote.
const MAX_FILE_BYTES: u64 = 1024;

/// Why the token could not be read or generated.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    /// The file could not be read, written or checked.
    #[error("admin token file {path}: {source}; check that the state directory belongs to the user pgcdc runs as")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not what pgcdc writes (too large, empty, not text).
    #[error(
        "admin token file {path} {problem}; delete it and start pgcdc again to generate a new one"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The file can be read by other users.
    #[error("admin token file {path} can be read by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// No token configured and none generated yet (the CLI does not generate one).
    #[error("no admin token yet: admin.token is not set and {path} does not exist; `pgcdc run` generates it at its first start")]
    Missing {
        /// The file that would hold it.
        path: PathBuf,
    },
}

/// Where the generated token lives.
pub(crate) fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The token the API checks: the configured one, else the generated one (created
/// now when missing). The second value is true when it was configured.
pub(crate) fn load_or_create(config: &Config) -> Result<(Secret, bool), TokenError> {
    if let Some(t) = &config.admin.token {
        return Ok((t.clone(), true));
    }
    let path = path(&config.state.dir);
    match read(&path)? {
        Some(t) => Ok((t, false)),
        None => Ok((create(&path)?, false)),
    }
}

/// The token for the CLI: the configured one, else the generated one (never created here:
/// a CLI run as another user would leave a file pgcdc cannot read).
pub(crate) fn current(config: &Config) -> Result<Secret, TokenError> {
    if let Some(t) = &config.admin.token {
        return Ok(t.clone());
    }
    let path = path(&config.state.dir);
    read(&path)?.ok_or(TokenError::Missing { path })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TokenError + '_ {
    move |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the token file; `None` when it does not exist.
fn read(path: &Path) -> Result<Option<Secret>, TokenError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let meta = file.metadata().map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let invalid = |problem: &str| TokenError::Invalid {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(invalid("is larger than 1 KiB"));
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|_| invalid("is not text"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(invalid("is empty"));
    }
    Ok(Some(Secret::new(token.to_string())))
}

/// Generates a token and publishes it without ever replacing one: written to a
/// private temporary file, then hard-linked into place (a concurrent start that
/// won the race keeps its token, and this one reads it).
fn create(path: &Path) -> Result<Secret, TokenError> {
    let mut random = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(io(Path::new("/dev/urandom")))?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    // With the state in Postgres, nothing else creates the state directory.
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(format!("{token}\n").as_bytes())?;
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(file = %path.display(), "generated the admin API token (owner-only); `pgcdc admin-token` prints it");
            Ok(Secret::new(token))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(path)?.ok_or_else(|| TokenError::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_owner_only_and_kept() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = path(dir.path());
        assert!(read(&p).ok().flatten().is_none());
        let first = create(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.expose().len(), 2 * TOKEN_BYTES);
        let mode = std::fs::metadata(&p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_default();
        assert_eq!(mode, 0o600);
        // A second start does not replace it.
        let second = create(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.expose(), second.expose());
        let again = read(&p).ok().flatten().map(|s| s.expose().to_string());
        assert_eq!(again.as_deref(), Some(first.expose()));
    }

    #[test]
    fn a_missing_state_dir_is_created_owner_only() {
        // With the state in Postgres, `state.dir` holds only the token.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let state = dir.path().join("not-yet");
        let token = create(&path(&state)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.expose().len(), 2 * TOKEN_BYTES);
        let mode = std::fs::metadata(&state)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_default();
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = path(dir.path());
        std::fs::write(&p, "abc\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = read(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
