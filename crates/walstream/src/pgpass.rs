//! The password file (`~/.pgpass`, or `passfile` / PGPASSFILE), read the way
//! libpq reads it: `host:port:database:user:password` lines, `*` matching
//! anything in the first four fields, `\:` and `\\` escapes, `#` comments,
//! and the file ignored (with a warning) when group or others can read it.

use std::path::{Path, PathBuf};

use crate::config::{Host, ReplicationConfig};

/// The password for this connection from the password file, if any line
/// matches.
pub(crate) fn lookup(config: &ReplicationConfig) -> Option<String> {
    let path = match config.passfile() {
        Some(p) => p.to_path_buf(),
        None => default_path()?,
    };
    let contents = read_private(&path)?;
    let host = match config.host() {
        Host::Tcp(h) => h.clone(),
        Host::Unix(dir) => dir.to_string_lossy().into_owned(),
    };
    find(
        &contents,
        &host,
        &config.port().to_string(),
        config.dbname(),
        config.user(),
    )
}

fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".pgpass"))
}

fn read_private(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "password file has group or world access; ignoring it: chmod 0600 it"
            );
            return None;
        }
    }
    std::fs::read_to_string(path).ok()
}

/// Splits a line on unescaped ':' into at most 5 fields, unescaping.
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(next), Some(last)) = (chars.next(), out.last_mut()) {
                    last.push(next);
                }
            }
            ':' if out.len() < 5 => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

/// The password of the first line matching host, port, database and user.
pub(crate) fn find(contents: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
    contents
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(fields)
        .find_map(|f| match f.as_slice() {
            [h, p, d, u, password] => {
                (matches(h, host) && matches(p, port) && matches(d, db) && matches(u, user))
                    .then(|| password.clone())
            }
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_line_wins_with_wildcards_and_escapes() {
        let file = "\
# comment
db.example:5432:shop:relay:first
*:*:shop:relay:second
h\\:x:*:*:*:pa\\:ss\\\\word
*:*:*:*:fallback
";
        assert_eq!(
            find(file, "db.example", "5432", "shop", "relay").as_deref(),
            Some("first")
        );
        assert_eq!(
            find(file, "other", "6543", "shop", "relay").as_deref(),
            Some("second")
        );
        assert_eq!(
            find(file, "h:x", "1", "d", "u").as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(find(file, "z", "1", "d", "u").as_deref(), Some("fallback"));
        assert_eq!(find("a:b:c\n", "a", "b", "c", "d"), None);
    }

    #[test]
    fn a_readable_password_file_is_ignored_and_a_private_one_used() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:relay:from-file\n").unwrap();
        let mut config = ReplicationConfig::parse_with_env(
            &format!("host=h user=relay passfile={}", path.display()),
            |_| None,
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(lookup(&config), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&config).as_deref(), Some("from-file"));
        config.set_password("explicit");
        assert!(config.has_password());
    }
}
