//! The credentials file: who may authenticate, and with what, stored so
//! that a reader of the file learns no secret.
//!
//! ```toml
//! [[user]]
//! name = "orders-service"
//! mechanism = "token"
//! token_id = "3q2-7wAAAAA"          # public: finds the entry
//! salt = "…"                        # base64
//! hash = "…"                        # SHA-256(salt ‖ secret), base64
//!
//! [[user]]
//! name = "alice"
//! mechanism = "scram-sha-256"       # or scram-sha-512
//! salt = "…"
//! iterations = 4096
//! stored_key = "…"                  # H(HMAC(SaltedPassword, "Client Key"))
//! server_key = "…"                  # HMAC(SaltedPassword, "Server Key")
//! ```
//!
//! - **Tokens** (gRPC bearer tokens) are generated here: `ferry_` then
//!   [`TOKEN_ID_BYTES`] of id and [`TOKEN_SECRET_BYTES`] of secret,
//!   base64url. The file keeps the id, which finds the entry without
//!   trying every one, and a salted SHA-256 of the secret, compared in
//!   constant time. A 256-bit random secret needs no slow hash.
//! - **SCRAM** credentials (RFC 5802, RFC 7677; Kafka's SASL/SCRAM) keep
//!   the salt, the iteration count and the two derived keys, never the
//!   password: the keys let the broker check a proof and prove itself,
//!   and do not let a reader of the file log in.
//!
//! A name may hold one credential per mechanism. The file is read whole,
//! at most [`MAX_CREDENTIALS_FILE_BYTES`], with at most [`MAX_USERS`]
//! entries, and rewritten atomically with mode 0600.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::scram;

/// Largest credentials file read.
pub const MAX_CREDENTIALS_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Most entries in one file.
pub const MAX_USERS: usize = 10_000;
/// Longest user name, in bytes.
pub const MAX_USER_NAME_BYTES: usize = 255;
/// Bytes of a token's public id.
pub const TOKEN_ID_BYTES: usize = 8;
/// Bytes of a token's secret.
pub const TOKEN_SECRET_BYTES: usize = 32;
/// What every token starts with.
pub const TOKEN_PREFIX: &str = "ferry_";
/// Bytes of a generated salt.
pub const SALT_BYTES: usize = 16;
/// SCRAM iterations of a new credential (Kafka's minimum and default).
pub const DEFAULT_SCRAM_ITERATIONS: u32 = 4096;
/// Fewest SCRAM iterations accepted from the file.
pub const MIN_SCRAM_ITERATIONS: u32 = 4096;
/// Most SCRAM iterations accepted from the file (Kafka's maximum).
pub const MAX_SCRAM_ITERATIONS: u32 = 16_384;
/// Longest password `ferry user add` takes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// How a user authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanism {
    /// A bearer token (gRPC).
    Token,
    /// SASL SCRAM-SHA-256 (Kafka).
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// SASL SCRAM-SHA-512 (Kafka).
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

impl Mechanism {
    /// The name used in the file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Token => "token",
            Mechanism::ScramSha256 => "scram-sha-256",
            Mechanism::ScramSha512 => "scram-sha-512",
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mechanism {
    type Err = String;

    fn from_str(s: &str) -> Result<Mechanism, String> {
        [
            Mechanism::Token,
            Mechanism::ScramSha256,
            Mechanism::ScramSha512,
        ]
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| format!("expected token, scram-sha-256 or scram-sha-512, got {s:?}"))
    }
}

/// Why the credentials file cannot be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {size} bytes is over the {MAX_CREDENTIALS_FILE_BYTES}-byte limit")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("user {name:?} already has a {} credential", mechanism.name())]
    Exists { name: String, mechanism: Mechanism },
    #[error("no user {0:?}")]
    UnknownUser(String),
}

/// SCRAM's stored credential for one user and hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramCredential {
    /// Derives the credential for `password` (RFC 5802: SaltedPassword =
    /// PBKDF2-HMAC(password, salt, iterations); ClientKey =
    /// HMAC(SaltedPassword, "Client Key"); StoredKey = H(ClientKey);
    /// ServerKey = HMAC(SaltedPassword, "Server Key")).
    pub fn derive(
        mechanism: Mechanism,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> ScramCredential {
        let salted = scram::salted_password(mechanism, password, salt, iterations);
        let client_key = scram::hmac(mechanism, &salted, b"Client Key");
        let stored_key = scram::hash(mechanism, &client_key);
        let server_key = scram::hmac(mechanism, &salted, b"Server Key");
        ScramCredential {
            salt: salt.to_vec(),
            iterations,
            stored_key,
            server_key,
        }
    }
}

impl ScramCredential {
    /// Whether `password` is the one this credential was derived from (for
    /// SASL PLAIN), compared in constant time.
    pub fn matches_password(&self, mechanism: Mechanism, password: &[u8]) -> bool {
        let other = ScramCredential::derive(mechanism, password, &self.salt, self.iterations);
        bool::from(other.stored_key.ct_eq(&self.stored_key))
    }
}

/// One entry of the file, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Secret {
    Token {
        id: Vec<u8>,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Scram(ScramCredential),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct User {
    name: String,
    mechanism: Mechanism,
    secret: Secret,
}

/// The entry as the file spells it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    name: String,
    mechanism: Mechanism,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_id: Option<String>,
    salt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iterations: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stored_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server_key: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default, rename = "user")]
    users: Vec<FileUser>,
}

/// The users of a credentials file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    users: Vec<User>,
    /// Token id → index in `users`.
    tokens: HashMap<Vec<u8>, usize>,
}

/// Checks a user name: 1 to [`MAX_USER_NAME_BYTES`] bytes, no control
/// characters (it appears in logs and in principals).
pub fn check_user_name(name: &str) -> Result<(), CredentialsError> {
    if name.is_empty() || name.len() > MAX_USER_NAME_BYTES {
        return Err(CredentialsError::Invalid(format!(
            "a user name must be 1 to {MAX_USER_NAME_BYTES} bytes, got {}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(CredentialsError::Invalid(format!(
            "user name {name:?} contains a control character"
        )));
    }
    Ok(())
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rand::rng().fill_bytes(&mut b);
    b
}

fn token_hash(salt: &[u8], secret: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret);
    h.finalize().to_vec()
}

impl Credentials {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let io = |op, source| CredentialsError::Io {
            op,
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(|e| io("read", e))?.len();
        if size > MAX_CREDENTIALS_FILE_BYTES {
            return Err(CredentialsError::TooLarge {
                path: path.to_path_buf(),
                size,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| io("read", e))?;
        Credentials::parse(&text)
            .map_err(|e| CredentialsError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Like [`Credentials::load`], but a missing file is an empty set (for
    /// `ferry user add` creating the file).
    pub fn load_or_empty(path: &Path) -> Result<Credentials, CredentialsError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Credentials::default()),
            _ => Credentials::load(path),
        }
    }

    /// Parses the file's text, checking every entry.
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let shape: FileShape = toml::from_str(text).map_err(|e| e.to_string())?;
        if shape.users.len() > MAX_USERS {
            return Err(format!(
                "{} users is over the limit of {MAX_USERS}",
                shape.users.len()
            ));
        }
        let mut creds = Credentials::default();
        for (i, u) in shape.users.into_iter().enumerate() {
            let at = format!("user {} ({:?})", i + 1, u.name);
            let user = User::from_file(u).map_err(|e| format!("{at}: {e}"))?;
            creds.insert(user).map_err(|e| format!("{at}: {e}"))?;
        }
        Ok(creds)
    }

    fn insert(&mut self, user: User) -> Result<(), CredentialsError> {
        check_user_name(&user.name)?;
        if self
            .users
            .iter()
            .any(|u| u.name == user.name && u.mechanism == user.mechanism)
        {
            return Err(CredentialsError::Exists {
                name: user.name,
                mechanism: user.mechanism,
            });
        }
        if self.users.len() >= MAX_USERS {
            return Err(CredentialsError::Invalid(format!(
                "the file already holds the most users, {MAX_USERS}"
            )));
        }
        if let Secret::Token { id, .. } = &user.secret {
            if self.tokens.contains_key(id) {
                return Err(CredentialsError::Invalid("a token id appears twice".into()));
            }
            self.tokens.insert(id.clone(), self.users.len());
        }
        self.users.push(user);
        Ok(())
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let shape = FileShape {
            users: self.users.iter().map(User::to_file).collect(),
        };
        toml::to_string(&shape).expect("credentials serialize")
    }

    /// Writes the file atomically, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), CredentialsError> {
        ferry_storage::fsutil::atomic_write_mode(path, self.to_toml().as_bytes(), 0o600).map_err(
            |source| CredentialsError::Io {
                op: "write",
                path: path.to_path_buf(),
                source,
            },
        )
    }

    /// Adds a token for `name` and returns it: the only time it exists
    /// outside the client that keeps it.
    pub fn add_token(&mut self, name: &str) -> Result<String, CredentialsError> {
        let id = loop {
            let id = random_bytes(TOKEN_ID_BYTES);
            if !self.tokens.contains_key(&id) {
                break id;
            }
        };
        let secret = random_bytes(TOKEN_SECRET_BYTES);
        let salt = random_bytes(SALT_BYTES);
        let mut raw = id.clone();
        raw.extend_from_slice(&secret);
        let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw));
        self.insert(User {
            name: name.to_string(),
            mechanism: Mechanism::Token,
            secret: Secret::Token {
                id,
                hash: token_hash(&salt, &secret),
                salt,
            },
        })?;
        Ok(token)
    }

    /// Adds a SCRAM credential for `name` from `password`.
    pub fn add_scram(
        &mut self,
        name: &str,
        mechanism: Mechanism,
        password: &[u8],
    ) -> Result<(), CredentialsError> {
        if mechanism == Mechanism::Token {
            return Err(CredentialsError::Invalid(
                "add_scram takes a SCRAM mechanism".into(),
            ));
        }
        if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
            return Err(CredentialsError::Invalid(format!(
                "a password must be 1 to {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        let salt = random_bytes(SALT_BYTES);
        let cred = ScramCredential::derive(mechanism, password, &salt, DEFAULT_SCRAM_ITERATIONS);
        self.insert(User {
            name: name.to_string(),
            mechanism,
            secret: Secret::Scram(cred),
        })
    }

    /// Removes `name`'s credentials: of one mechanism, or all. Returns how
    /// many went.
    pub fn remove(
        &mut self,
        name: &str,
        mechanism: Option<Mechanism>,
    ) -> Result<usize, CredentialsError> {
        let before = self.users.len();
        self.users
            .retain(|u| !(u.name == name && mechanism.is_none_or(|m| m == u.mechanism)));
        let removed = before - self.users.len();
        if removed == 0 {
            return Err(CredentialsError::UnknownUser(name.to_string()));
        }
        self.tokens = self
            .users
            .iter()
            .enumerate()
            .filter_map(|(i, u)| match &u.secret {
                Secret::Token { id, .. } => Some((id.clone(), i)),
                Secret::Scram(_) => None,
            })
            .collect();
        Ok(removed)
    }

    /// Every (name, mechanism), in file order.
    pub fn users(&self) -> impl Iterator<Item = (&str, Mechanism)> {
        self.users.iter().map(|u| (u.name.as_str(), u.mechanism))
    }

    /// Whether the file holds no credential at all.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The user a bearer token belongs to, or `None`. The secret is
    /// compared in constant time; the id only finds the entry.
    pub fn authenticate_token(&self, token: &str) -> Option<&str> {
        let raw = URL_SAFE_NO_PAD
            .decode(token.strip_prefix(TOKEN_PREFIX)?)
            .ok()?;
        if raw.len() != TOKEN_ID_BYTES + TOKEN_SECRET_BYTES {
            return None;
        }
        let (id, secret) = raw.split_at(TOKEN_ID_BYTES);
        let user = &self.users[*self.tokens.get(id)?];
        match &user.secret {
            Secret::Token { salt, hash, .. } => {
                bool::from(token_hash(salt, secret).ct_eq(hash)).then_some(user.name.as_str())
            }
            Secret::Scram(_) => None,
        }
    }

    /// Whether `password` is `user`'s SCRAM password (either mechanism):
    /// SASL PLAIN and the HTTP listener's basic authentication check a
    /// password this way, against the salted keys.
    pub fn authenticate_password(&self, user: &str, password: &[u8]) -> bool {
        [Mechanism::ScramSha256, Mechanism::ScramSha512]
            .iter()
            .filter_map(|m| self.scram(user, *m).map(|c| (m, c)))
            .any(|(m, c)| c.matches_password(*m, password))
    }

    /// A set of one SCRAM credential, for tests with fixed salts.
    #[cfg(test)]
    pub(crate) fn with_scram_for_tests(
        name: &str,
        mechanism: Mechanism,
        credential: ScramCredential,
    ) -> Credentials {
        let mut c = Credentials::default();
        c.insert(User {
            name: name.to_string(),
            mechanism,
            secret: Secret::Scram(credential),
        })
        .expect("one user");
        c
    }

    /// `name`'s SCRAM credential for `mechanism`.
    pub fn scram(&self, name: &str, mechanism: Mechanism) -> Option<&ScramCredential> {
        self.users.iter().find_map(|u| match &u.secret {
            Secret::Scram(c) if u.name == name && u.mechanism == mechanism => Some(c),
            _ => None,
        })
    }
}

fn b64(field: &str, v: Option<String>) -> Result<Vec<u8>, String> {
    let v = v.ok_or_else(|| format!("missing {field}"))?;
    STANDARD
        .decode(v.as_bytes())
        .map_err(|e| format!("{field} is not base64: {e}"))
}

impl User {
    fn from_file(u: FileUser) -> Result<User, String> {
        check_user_name(&u.name).map_err(|e| e.to_string())?;
        let salt = b64("salt", Some(u.salt))?;
        if salt.is_empty() {
            return Err("empty salt".into());
        }
        let secret = match u.mechanism {
            Mechanism::Token => {
                if u.iterations.is_some() || u.stored_key.is_some() || u.server_key.is_some() {
                    return Err("a token entry has SCRAM fields".into());
                }
                let id = URL_SAFE_NO_PAD
                    .decode(u.token_id.ok_or("missing token_id")?.as_bytes())
                    .map_err(|e| format!("token_id is not base64url: {e}"))?;
                let hash = b64("hash", u.hash)?;
                if id.len() != TOKEN_ID_BYTES || hash.len() != 32 {
                    return Err("token_id or hash has the wrong length".into());
                }
                Secret::Token { id, salt, hash }
            }
            m => {
                if u.token_id.is_some() || u.hash.is_some() {
                    return Err("a SCRAM entry has token fields".into());
                }
                let iterations = u.iterations.ok_or("missing iterations")?;
                if !(MIN_SCRAM_ITERATIONS..=MAX_SCRAM_ITERATIONS).contains(&iterations) {
                    return Err(format!(
                        "iterations must be in {MIN_SCRAM_ITERATIONS}..={MAX_SCRAM_ITERATIONS}"
                    ));
                }
                let len = if m == Mechanism::ScramSha512 { 64 } else { 32 };
                let stored_key = b64("stored_key", u.stored_key)?;
                let server_key = b64("server_key", u.server_key)?;
                if stored_key.len() != len || server_key.len() != len {
                    return Err(format!("stored_key and server_key must be {len} bytes"));
                }
                Secret::Scram(ScramCredential {
                    salt,
                    iterations,
                    stored_key,
                    server_key,
                })
            }
        };
        Ok(User {
            name: u.name,
            mechanism: u.mechanism,
            secret,
        })
    }

    fn to_file(&self) -> FileUser {
        let mut f = FileUser {
            name: self.name.clone(),
            mechanism: self.mechanism,
            token_id: None,
            salt: String::new(),
            hash: None,
            iterations: None,
            stored_key: None,
            server_key: None,
        };
        match &self.secret {
            Secret::Token { id, salt, hash } => {
                f.token_id = Some(URL_SAFE_NO_PAD.encode(id));
                f.salt = STANDARD.encode(salt);
                f.hash = Some(STANDARD.encode(hash));
            }
            Secret::Scram(c) => {
                f.salt = STANDARD.encode(&c.salt);
                f.iterations = Some(c.iterations);
                f.stored_key = Some(STANDARD.encode(&c.stored_key));
                f.server_key = Some(STANDARD.encode(&c.server_key));
            }
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_authenticates_its_user_and_nothing_else_does() {
        let mut c = Credentials::default();
        let alice = c.add_token("alice").unwrap();
        let bob = c.add_token("bob").unwrap();
        assert!(alice.starts_with(TOKEN_PREFIX));
        assert_ne!(alice, bob);
        assert_eq!(c.authenticate_token(&alice), Some("alice"));
        assert_eq!(c.authenticate_token(&bob), Some("bob"));
        // The right id with a wrong secret, a truncated token, garbage.
        let mut forged = alice.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(c.authenticate_token(&forged), None);
        assert_eq!(c.authenticate_token(&alice[..alice.len() - 4]), None);
        assert_eq!(c.authenticate_token("ferry_"), None);
        assert_eq!(c.authenticate_token("Bearer x"), None);
        assert_eq!(c.authenticate_token(&alice[TOKEN_PREFIX.len()..]), None);
    }

    #[test]
    fn the_file_round_trips_and_holds_no_secret() {
        let mut c = Credentials::default();
        let token = c.add_token("svc").unwrap();
        c.add_scram("alice", Mechanism::ScramSha256, b"pencil")
            .unwrap();
        c.add_scram("alice", Mechanism::ScramSha512, b"pencil")
            .unwrap();
        let text = c.to_toml();
        assert!(!text.contains(&token[TOKEN_PREFIX.len()..]), "{text}");
        assert!(!text.contains("pencil"), "{text}");
        let back = Credentials::parse(&text).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.authenticate_token(&token), Some("svc"));
        assert_eq!(
            back.users().collect::<Vec<_>>(),
            [
                ("svc", Mechanism::Token),
                ("alice", Mechanism::ScramSha256),
                ("alice", Mechanism::ScramSha512)
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.toml");
        c.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        assert_eq!(Credentials::load(&path).unwrap(), c);
    }

    #[test]
    fn duplicates_bad_names_and_unknown_users_are_refused() {
        let mut c = Credentials::default();
        c.add_scram("alice", Mechanism::ScramSha256, b"pw").unwrap();
        assert!(matches!(
            c.add_scram("alice", Mechanism::ScramSha256, b"other"),
            Err(CredentialsError::Exists { .. })
        ));
        assert!(c.add_token("").is_err());
        assert!(c.add_token("a\nb").is_err());
        assert!(c.add_token(&"x".repeat(MAX_USER_NAME_BYTES + 1)).is_err());
        assert!(c.add_scram("bob", Mechanism::ScramSha256, b"").is_err());
        assert!(matches!(
            c.remove("nobody", None),
            Err(CredentialsError::UnknownUser(_))
        ));
        let t = c.add_token("alice").unwrap();
        assert_eq!(c.remove("alice", Some(Mechanism::ScramSha256)).unwrap(), 1);
        assert_eq!(c.authenticate_token(&t), Some("alice"));
        assert_eq!(c.remove("alice", None).unwrap(), 1);
        assert_eq!(c.authenticate_token(&t), None);
        assert!(c.is_empty());
    }

    #[test]
    fn malformed_files_are_clear_errors() {
        let mut c = Credentials::default();
        c.add_scram("alice", Mechanism::ScramSha256, b"pw").unwrap();
        let good = c.to_toml();
        for (bad, says) in [
            ("[[user]]\nname = \"a\"\n", "missing field"),
            (
                "[[user]]\nname = \"a\"\nmechanism = \"md5\"\nsalt = \"AA==\"\n",
                "unknown variant",
            ),
            ("nonsense = 1\n", "unknown field"),
            (
                &good.replace("iterations = 4096", "iterations = 1"),
                "iterations",
            ),
            (
                &good.replace("stored_key = \"", "stored_key = \"!!"),
                "base64",
            ),
            (&format!("{good}{good}"), "already has"),
        ] {
            let e = Credentials::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Credentials::load(&dir.path().join("missing")),
            Err(CredentialsError::Io { .. })
        ));
        assert!(
            Credentials::load_or_empty(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }

    /// RFC 7677 §3: user "user", password "pencil", this salt and 4096
    /// iterations; the stored and server keys are those that make the
    /// RFC's client proof and server signature check.
    #[test]
    fn scram_sha_256_keys_match_rfc_7677() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let c = ScramCredential::derive(Mechanism::ScramSha256, b"pencil", &salt, 4096);
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
            c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let hmac = |key: &[u8], msg: &[u8]| scram::hmac(Mechanism::ScramSha256, key, msg);
        let proof = STANDARD
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        let signature = hmac(&c.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        assert_eq!(Sha256::digest(&client_key).to_vec(), c.stored_key);
        assert_eq!(
            STANDARD.encode(hmac(&c.server_key, auth_message.as_bytes())),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }
}
