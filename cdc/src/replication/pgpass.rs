//! The password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`), read as libpq reads it:
//! lines `hostname:port:database:username:password`, `*` matches anything in the
//! first four fields, `\:` and `\\` escape, `#` starts a comment. A file that is not
//! a plain file, or that the group or others may access, is ignored with a warning.
//! Its lines never reach a log or an error (they are passwords).

use std::io::Read;
use std::path::Path;

use super::Secret;

/// A password file larger than this is not one; reading stops there.
const MAX_BYTES: u64 = 1024 * 1024;

/// libpq's compiled-in socket directories: a socket there is also `localhost` in the file.
const DEFAULT_SOCKET_DIRS: &[&str] = &["/var/run/postgresql", "/run/postgresql", "/tmp"];

/// The password for this connection, if the file has a line for it.
pub(crate) fn lookup(
    path: &Path,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<Secret> {
    let text = read(path)?;
    let port = port.to_string();
    let socket_is_local = DEFAULT_SOCKET_DIRS.contains(&host.trim_end_matches('/'));
    let hosts: &[&str] = if socket_is_local {
        &[host, "localhost"]
    } else {
        &[host]
    };
    hosts
        .iter()
        .find_map(|h| find(&text, h, &port, dbname, user))
        .map(Secret::new)
}

/// The file's text, or None (missing, unsafe, unreadable: warned about, as libpq does).
fn read(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    let shown = path.display();
    if !meta.is_file() {
        tracing::warn!(passfile = %shown, "password file is not a plain file; ignored");
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            passfile = %shown,
            "password file has group or world access; ignored: chmod 0600 it"
        );
        return None;
    }
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(MAX_BYTES).read_to_string(&mut text));
    if let Err(e) = read {
        tracing::warn!(passfile = %shown, error = %e, "cannot read the password file; ignored");
        return None;
    }
    Some(text)
}

/// The first line matching, its password unescaped.
fn find(text: &str, host: &str, port: &str, dbname: &str, user: &str) -> Option<String> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|line| {
            let fields = split(line);
            let [h, p, d, u, password] = <[String; 5]>::try_from(fields).ok()?;
            let matches = |field: &str, value: &str| field == "*" || field == value;
            (matches(&h, host) && matches(&p, port) && matches(&d, dbname) && matches(&u, user))
                .then_some(password)
        })
}

/// Splits on unescaped `:` into at most five fields, unescaping `\x` to `x`
/// (the fifth, the password, keeps any further `:`).
fn split(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields
                .last_mut()
                .into_iter()
                .for_each(|f| f.extend(chars.next())),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().into_iter().for_each(|f| f.push(c)),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const FILE: &str = "# comment\n\
        db.example.com:5432:portal:alice:first\n\
        *:5432:*:alice:wild\\:card\\\\pw\n\
        h\\:x:*:*:bob:escaped:host\n\
        localhost:5433:*:carol:socket\n";

    #[test]
    fn pgpass_lines_match_with_wildcards_and_escapes() {
        assert_eq!(
            find(FILE, "db.example.com", "5432", "portal", "alice").as_deref(),
            Some("first")
        );
        assert_eq!(
            find(FILE, "other", "5432", "x", "alice").as_deref(),
            Some("wild:card\\pw")
        );
        assert_eq!(find(FILE, "other", "6000", "x", "alice"), None);
        assert_eq!(
            find(FILE, "h:x", "1", "d", "bob").as_deref(),
            Some("escaped:host")
        );
        assert_eq!(find(FILE, "db.example.com", "5432", "portal", "dave"), None);
    }

    #[test]
    fn pgpass_file_needs_owner_only_permissions() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let path = dir.path().join("pgpass");
        if let Err(e) = std::fs::write(&path, FILE) {
            panic!("{e}");
        }
        let chmod = |mode| {
            if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)) {
                panic!("{e}");
            }
        };
        chmod(0o600);
        let got = lookup(&path, "/var/run/postgresql", 5433, "d", "carol");
        assert_eq!(got.as_ref().map(Secret::expose), Some("socket"));
        chmod(0o644);
        assert_eq!(
            lookup(&path, "db.example.com", 5432, "portal", "alice"),
            None
        );
        assert_eq!(lookup(&dir.path().join("missing"), "h", 1, "d", "u"), None);
        assert_eq!(lookup(dir.path(), "h", 1, "d", "u"), None);
    }
}
