//! Authentication: who a client is. [`credentials`] holds the
//! credentials file (tokens and SCRAM keys, never a secret in the clear),
//! which `ferry user` manages and the broker reads with `--credentials`.

pub mod credentials;

pub use credentials::{Credentials, CredentialsError, Mechanism, ScramCredential};
