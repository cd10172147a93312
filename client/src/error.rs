//! The client's error type.

use ferry_proto::ErrorCode;

/// Everything a client call can fail with.
///
/// [`ClientError::code`] maps each variant onto the stable [`ErrorCode`]
/// table, so callers can tell definite failures (the operation surely did
/// not happen) from indefinite ones with [`ErrorCode::is_definite`]. Branch
/// on [`ClientError::code`] rather than on messages; new variants may come,
/// so matches need a wildcard arm.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The broker answered with a non-zero error code.
    #[error("{code}: {message}")]
    Broker {
        /// The broker's error code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// The RPC failed below the Ferry protocol (connection loss, gRPC
    /// limits). Treated as [`ErrorCode::NetworkError`]: indefinite and
    /// retriable. (A status `UNAUTHENTICATED`, from a broker that requires
    /// a token, becomes [`ClientError::Broker`] with
    /// [`ErrorCode::AuthenticationFailed`] instead: definite, and not
    /// retried.)
    #[error("transport error: {0}")]
    Transport(tonic::Status),
    /// The first connection to the broker failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// An operation did not finish in time (for example a record's
    /// delivery timeout ran out while retrying).
    #[error("{what} timed out after {after_ms} ms")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// How long it was given.
        after_ms: u64,
    },
    /// The caller passed something unusable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The producer or consumer was closed.
    #[error("the client was closed")]
    Closed,
    /// [`Producer::flush`](crate::Producer::flush): records sent since the
    /// previous flush failed. Each one's [`Delivery`](crate::Delivery)
    /// holds its own error; this one counts them and names the first.
    #[error("{failed} record(s) failed since the last flush; the first: {first_error}")]
    RecordsFailed {
        /// Records whose batch failed.
        failed: u64,
        /// The error of the first of them to fail.
        first_error: Box<ClientError>,
    },
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> ClientError {
        // A broker with credentials refuses a request without a valid
        // token before the Ferry protocol answers: definite, and no retry
        // can help.
        if s.code() == tonic::Code::Unauthenticated {
            ClientError::broker(ErrorCode::AuthenticationFailed, s.message())
        } else {
            ClientError::Transport(s)
        }
    }
}

impl ClientError {
    pub(crate) fn broker(code: ErrorCode, message: impl Into<String>) -> ClientError {
        ClientError::Broker {
            code,
            message: message.into(),
        }
    }

    /// The stable error code this error corresponds to.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Broker { code, .. } => *code,
            ClientError::Transport(_) | ClientError::Connect { .. } => ErrorCode::NetworkError,
            ClientError::Timeout { .. } => ErrorCode::RequestTimedOut,
            ClientError::InvalidArgument(_) => ErrorCode::InvalidRequest,
            ClientError::Closed => ErrorCode::Unknown,
            ClientError::RecordsFailed { first_error, .. } => first_error.code(),
        }
    }

    /// Whether trying the operation again may succeed and is safe.
    ///
    /// `Closed` is never retriable: the handle it came from is gone.
    pub fn is_retriable(&self) -> bool {
        match self {
            // The records failed for good: a retry would be a new send.
            ClientError::Closed
            | ClientError::InvalidArgument(_)
            | ClientError::RecordsFailed { .. } => false,
            other => other.code().is_retriable(),
        }
    }
}

/// Turns a response's `error_code` / `error_message` pair into a result.
pub(crate) fn check(code: u32, message: &str) -> Result<(), ClientError> {
    if code == 0 {
        Ok(())
    } else {
        Err(ClientError::broker(ErrorCode::from_u32(code), message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unauthenticated_status_is_a_definite_authentication_failure() {
        let e = ClientError::from(tonic::Status::unauthenticated("invalid token"));
        assert_eq!(e.code(), ErrorCode::AuthenticationFailed);
        assert!(e.code().is_definite() && !e.code().is_retriable());
        assert_eq!(e.to_string(), "authentication_failed: invalid token");
        let e = ClientError::from(tonic::Status::unavailable("gone"));
        assert_eq!(e.code(), ErrorCode::NetworkError);
    }

    #[test]
    fn broker_errors_display_code_and_message() {
        let e = ClientError::broker(ErrorCode::UnknownTopicOrPartition, "no topic x");
        assert_eq!(e.to_string(), "unknown_topic_or_partition: no topic x");
        assert!(!e.is_retriable());
    }

    #[test]
    fn transport_errors_count_as_indefinite_network_errors() {
        let e = ClientError::from(tonic::Status::unavailable("down"));
        assert_eq!(e.code(), ErrorCode::NetworkError);
        assert!(!e.code().is_definite());
        assert!(e.is_retriable());
    }

    #[test]
    fn a_zero_code_is_success() {
        assert!(check(0, "").is_ok());
        let e = check(ErrorCode::RequestTimedOut.as_u32(), "slow").unwrap_err();
        assert!(e.is_retriable());
        assert!(!ClientError::Closed.is_retriable());
    }
}
