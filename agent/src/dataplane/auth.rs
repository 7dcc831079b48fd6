//! Bearer tokens for the inference APIs (`[node.serve] tokens = "FILE"`).
//!
//! The file holds one token per line, in either form:
//!
//! * `NAME:HEX`: a named token given by its SHA-256 (`HEX`, 64 hex digits), e.g. from
//!   `printf %s "$TOKEN" | sha256sum`. The file then holds no secret.
//! * any other line: the token itself (at least [`MIN_TOKEN_LEN`] characters, no
//!   whitespace), named `line N` in logs. It is hashed when read.
//!
//! Blank lines and lines starting with `#` are skipped. Only hashes are kept in memory;
//! a presented token is hashed and compared with every entry in constant time (no early
//! exit on a match or a differing byte). An empty file admits no one.
//!
//! Reload: the file's metadata (modification and change time, size, inode) is checked
//! when a request arrives, at most once per [`RECHECK`]; if it changed, the file is read
//! again. Replace it atomically (write a new file, then `mv` it over the old one). A file
//! that no longer reads or parses is logged and the previous tokens stay in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shortest plain token accepted (hashed entries are not limited: their secret is unknown).
pub const MIN_TOKEN_LEN: usize = 16;

/// How often the token file's metadata is checked for a change, at most.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A line is not a token.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the token itself).
        message: String,
    },
}

/// One accepted token.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    hash: [u8; 32],
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("name", &self.name).finish_non_exhaustive()
    }
}

/// What identifies a version of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    changed: (i64, i64),
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path)?;
    Ok(Stamp { modified: m.modified().ok(), changed: (m.ctime(), m.ctime_nsec()), len: m.len(), ino: m.ino() })
}

#[derive(Debug)]
struct State {
    entries: Arc<Vec<Entry>>,
    stamp: Option<Stamp>,
    checked: Instant,
}

/// The tokens of a token file, re-read when the file changes.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    state: Mutex<State>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equality of two hashes without an early exit.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Parse a token file's text; errors name `path` and the line.
fn parse(text: &str, path: &Path) -> Result<Vec<Entry>, TokenError> {
    let mut out: Vec<Entry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |message: String| TokenError::Line { path: path.to_path_buf(), line: i + 1, message };
        let entry = match line.split_once(':').and_then(|(n, h)| Some((n, hex32(h)?))) {
            Some((name, hash)) => {
                if name.is_empty() || name.chars().any(char::is_whitespace) {
                    return Err(bad("a hashed entry is NAME:SHA256HEX with a name without spaces".into()));
                }
                Entry { name: name.to_string(), hash }
            }
            None => {
                if line.chars().any(char::is_whitespace) {
                    return Err(bad("a token may not contain whitespace".into()));
                }
                if line.len() < MIN_TOKEN_LEN {
                    return Err(bad(format!("a token needs at least {MIN_TOKEN_LEN} characters")));
                }
                Entry { name: format!("line {}", i + 1), hash: sha256(line.as_bytes()) }
            }
        };
        if let Some(prev) = out.iter().find(|e| e.name == entry.name) {
            return Err(bad(format!("the name `{}` is used twice", prev.name)));
        }
        out.push(entry);
    }
    Ok(out)
}

fn read(path: &Path) -> Result<(Vec<Entry>, Stamp), TokenError> {
    let io = |source| TokenError::Io { path: path.to_path_buf(), source };
    let stamp = stamp(path).map_err(io)?;
    let text = std::fs::read_to_string(path).map_err(io)?;
    Ok((parse(&text, path)?, stamp))
}

impl TokenFile {
    /// Read `path` (an error names the file and line).
    pub fn load(path: &Path) -> Result<TokenFile, TokenError> {
        let (entries, stamp) = read(path)?;
        tracing::info!(path = %path.display(), tokens = entries.len(), "bearer tokens loaded");
        let state = State { entries: Arc::new(entries), stamp: Some(stamp), checked: Instant::now() };
        Ok(TokenFile { path: path.to_path_buf(), state: Mutex::new(state) })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokens in force.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether no token is in force (every request is refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries in force, re-reading the file first if its metadata changed (checked at
    /// most once per [`RECHECK`]).
    fn entries(&self) -> Arc<Vec<Entry>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.checked.elapsed() >= RECHECK {
            st.checked = Instant::now();
            let now = stamp(&self.path).ok();
            if now != st.stamp {
                match read(&self.path) {
                    Ok((entries, s)) => {
                        tracing::info!(path = %self.path.display(), tokens = entries.len(), "bearer tokens reloaded");
                        st.entries = Arc::new(entries);
                        st.stamp = Some(s);
                    }
                    Err(e) => {
                        // Keep the tokens in force; say so once per change of the file.
                        tracing::warn!(%e, "bearer token file unreadable; the previous tokens stay in force");
                        st.stamp = now;
                    }
                }
            }
        }
        st.entries.clone()
    }

    /// The name of the entry `token` matches, if any.
    pub fn verify(&self, token: &str) -> Option<String> {
        let h = sha256(token.as_bytes());
        let entries = self.entries();
        let mut found = None;
        for e in entries.iter() {
            if same(&e.hash, &h) && found.is_none() {
                found = Some(e.name.clone());
            }
        }
        found
    }
}

/// Why a request's credentials were not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `authorization: Bearer ...` header.
    Missing,
    /// A bearer token that is not in the file (or a malformed header).
    Invalid,
}

impl Denied {
    /// The message of the 401 answer.
    pub fn message(self) -> &'static str {
        match self {
            Denied::Missing => "this API needs `authorization: Bearer <token>`",
            Denied::Invalid => "the bearer token is not valid here",
        }
    }
}

/// Check an `authorization` header value against `tokens`: `Ok(name)` of the token.
pub fn check(tokens: &TokenFile, authorization: Option<&[u8]>) -> Result<String, Denied> {
    let v = authorization.ok_or(Denied::Missing)?;
    let v = std::str::from_utf8(v).map_err(|_| Denied::Invalid)?.trim();
    let (scheme, token) = v.split_once(' ').ok_or(Denied::Invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Denied::Missing);
    }
    tokens.verify(token.trim()).ok_or(Denied::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8; 32]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn plain_and_hashed_lines_and_errors_name_the_line() {
        let p = Path::new("t.tokens");
        let h = hex(&sha256(b"the-hashed-secret-0001"));
        let e = parse(&format!("# tokens\n\nplain-token-0000001\nci:{h}\n"), p).expect("valid");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].name, "line 3");
        assert_eq!(e[1], Entry { name: "ci".into(), hash: sha256(b"the-hashed-secret-0001") });
        for (text, line) in
            [("short\n", 1), ("ok-token-000000001\nhas space here\n", 2), (&format!("a:{h}\na:{h}\n"), 2)]
        {
            let err = parse(text, p).expect_err(text).to_string();
            assert!(err.starts_with(&format!("t.tokens:{line}: ")), "{err}");
            assert!(!err.contains("ok-token"), "no token in an error: {err}");
        }
    }

    #[test]
    fn check_takes_only_a_listed_bearer_token() {
        let dir = std::env::temp_dir().join(format!("jigsaw-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("tokens");
        std::fs::write(&path, "right-token-000000001\n").expect("write");
        let t = TokenFile::load(&path).expect("load");
        assert_eq!(check(&t, None), Err(Denied::Missing));
        assert_eq!(check(&t, Some(b"Basic abc")), Err(Denied::Missing));
        assert_eq!(check(&t, Some(b"Bearer wrong-token-00000001")), Err(Denied::Invalid));
        assert_eq!(check(&t, Some(b"Bearer")), Err(Denied::Invalid));
        assert_eq!(check(&t, Some(b"bearer right-token-000000001")).as_deref(), Ok("line 1"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
