//! Authentication: who a client is. [`credentials`] holds the
//! credentials file (tokens and SCRAM keys, never a secret in the clear),
//! which `ferry user` manages and the broker reads with `--credentials`;
//! `grpc` checks bearer tokens on the gRPC listener; [`scram`] is the
//! server's side of a SCRAM exchange, for Kafka's SASL; [`acl`] decides
//! what an authenticated principal may do.

pub mod acl;
pub mod actions;
pub mod credentials;
pub(crate) mod grpc;
pub mod scram;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use credentials::{Credentials, CredentialsError, Mechanism, ScramCredential};

/// Who a request comes from: the user its credential names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal(pub String);

/// The broker's credentials: the file's current contents, read at start
/// and again on [`CredentialsStore::reload`] (SIGHUP for `ferry broker`).
/// A request or a SASL exchange uses the set current when it starts.
#[derive(Debug)]
pub struct CredentialsStore {
    path: PathBuf,
    current: parking_lot::RwLock<Arc<Credentials>>,
}

impl CredentialsStore {
    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<CredentialsStore, CredentialsError> {
        Ok(CredentialsStore {
            path: path.to_path_buf(),
            current: parking_lot::RwLock::new(Arc::new(Credentials::load(path)?)),
        })
    }

    /// The credentials in force.
    pub fn current(&self) -> Arc<Credentials> {
        self.current.read().clone()
    }

    /// Rereads the file. A file that does not read or check leaves the
    /// credentials in force as they were.
    pub fn reload(&self) -> Result<(), CredentialsError> {
        let fresh = Credentials::load(&self.path)?;
        *self.current.write() = Arc::new(fresh);
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs a warning when no token is left: every gRPC request would be
    /// refused.
    pub fn warn_if_no_token(&self) {
        if !self.current().users().any(|(_, m)| m == Mechanism::Token) {
            tracing::warn!(path = %self.path.display(), "the credentials file holds no token: every gRPC request will be refused");
        }
    }
}
