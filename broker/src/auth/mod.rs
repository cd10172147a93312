//! Authentication: who a client is. [`credentials`] holds the
//! credentials file (tokens and SCRAM keys, never a secret in the clear),
//! which `ferry user` manages and the broker reads with `--credentials`;
//! `grpc` checks bearer tokens on the gRPC listener; [`scram`] is the
//! server's side of a SCRAM exchange, for Kafka's SASL.

pub mod credentials;
pub(crate) mod grpc;
pub mod scram;

pub use credentials::{Credentials, CredentialsError, Mechanism, ScramCredential};

/// Who a request comes from: the user its credential names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal(pub String);
