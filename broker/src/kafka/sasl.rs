//! SaslHandshake and SaslAuthenticate: who a Kafka connection is.
//!
//! With a credentials file (`--credentials`), a connection must
//! authenticate before anything but ApiVersions and these two requests:
//! SaslHandshake v1 picks a mechanism, then SaslAuthenticate carries its
//! messages (KIP-152). Mechanisms:
//!
//! - SCRAM-SHA-256 and SCRAM-SHA-512, against the stored keys
//!   ([`crate::auth::scram`]);
//! - PLAIN, checked against the user's SCRAM credential, and only on a
//!   loopback listener: without TLS, PLAIN would send the password in the
//!   clear over the network.
//!
//! Any failure answers with its error, then closes the connection, as
//! Kafka does. Without a credentials file every connection is anonymous and
//! both requests answer ILLEGAL_SASL_STATE.

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::sasl_authenticate_request::SaslAuthenticateRequest;
use kafka_protocol::messages::sasl_authenticate_response::SaslAuthenticateResponse;
use kafka_protocol::messages::sasl_handshake_request::SaslHandshakeRequest;
use kafka_protocol::messages::sasl_handshake_response::SaslHandshakeResponse;
use kafka_protocol::protocol::StrBytes;

use super::conn::Ctx;
use super::errors::code;
use crate::auth::scram::{self, ServerFirst};
use crate::auth::{Mechanism, Principal};

const PLAIN: &str = "PLAIN";
const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
const SCRAM_SHA_512: &str = "SCRAM-SHA-512";

/// A connection's authentication, step by step.
#[derive(Debug, Default)]
pub(crate) enum Sasl {
    /// Nothing yet.
    #[default]
    Start,
    /// SaslHandshake chose PLAIN.
    Plain,
    /// SaslHandshake chose a SCRAM mechanism.
    Scram(Mechanism),
    /// The server-first message was sent.
    ScramSent(Box<ServerFirst>),
    /// Authenticated.
    Done(Principal),
    /// A step failed: the connection closes after its answer.
    Failed,
}

impl Sasl {
    /// Whether a request of `key` may be handled: anything once
    /// authenticated (or when nothing needs it), else only the handshake.
    pub(crate) fn admits(&self, required: bool, key: ApiKey) -> bool {
        !required
            || matches!(self, Sasl::Done(_))
            || matches!(
                key,
                ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
            )
    }

    pub(crate) fn failed(&self) -> bool {
        matches!(self, Sasl::Failed)
    }
}

/// The mechanisms this connection may use.
fn enabled(cx: &Ctx<'_>) -> Vec<&'static str> {
    if cx.conn.credentials.is_none() {
        return Vec::new();
    }
    let mut m = vec![SCRAM_SHA_256, SCRAM_SHA_512];
    if cx.conn.link.tls || cx.conn.link.local.ip().is_loopback() {
        m.push(PLAIN);
    }
    m
}

/// Records a failed step: the log line, the metric, the state.
fn fail(cx: &Ctx<'_>, reason: &'static str, user: &str) {
    metrics::counter!("ferry_auth_failures_total", "listener" => "kafka", "reason" => reason)
        .increment(1);
    tracing::warn!(peer = %cx.conn.link.peer, user, reason, "refused a Kafka SASL authentication");
    *cx.conn.sasl.lock() = Sasl::Failed;
}

pub(crate) async fn sasl_handshake(
    cx: &Ctx<'_>,
    req: SaslHandshakeRequest,
) -> SaslHandshakeResponse {
    let mut resp = SaslHandshakeResponse::default();
    let enabled = enabled(cx);
    resp.mechanisms = enabled
        .iter()
        .map(|m| StrBytes::from_static_str(m))
        .collect();
    let asked = req.mechanism.as_str();
    if cx.conn.credentials.is_none() {
        resp.error_code = cx.raw(code::ILLEGAL_SASL_STATE);
        return resp;
    }
    let mut sasl = cx.conn.sasl.lock();
    if !matches!(*sasl, Sasl::Start) {
        drop(sasl);
        resp.error_code = cx.raw(code::ILLEGAL_SASL_STATE);
        fail(cx, "handshake_twice", "");
        return resp;
    }
    *sasl = match asked {
        SCRAM_SHA_256 => Sasl::Scram(Mechanism::ScramSha256),
        SCRAM_SHA_512 => Sasl::Scram(Mechanism::ScramSha512),
        PLAIN if enabled.contains(&PLAIN) => Sasl::Plain,
        _ => {
            drop(sasl);
            resp.error_code = cx.raw(code::UNSUPPORTED_SASL_MECHANISM);
            fail(cx, "mechanism", "");
            return resp;
        }
    };
    resp
}

pub(crate) async fn sasl_authenticate(
    cx: &Ctx<'_>,
    req: SaslAuthenticateRequest,
) -> SaslAuthenticateResponse {
    let mut resp = SaslAuthenticateResponse::default();
    let refuse = |resp: &mut SaslAuthenticateResponse, error: i16, message: &str| {
        resp.error_code = cx.raw(error);
        resp.error_message = Some(StrBytes::from_string(message.to_string()));
    };
    let Some(creds) = cx.conn.credentials.as_ref().map(|s| s.current()) else {
        refuse(
            &mut resp,
            code::ILLEGAL_SASL_STATE,
            "this listener does not authenticate",
        );
        return resp;
    };
    let step = std::mem::take(&mut *cx.conn.sasl.lock());
    let bytes = req.auth_bytes.as_ref();
    let next = match step {
        Sasl::Plain => {
            // authzid NUL authcid NUL password (RFC 4616).
            let mut parts = bytes.splitn(3, |b| *b == 0);
            let (authzid, user, password) = (parts.next(), parts.next(), parts.next());
            let user = user.and_then(|u| std::str::from_utf8(u).ok()).unwrap_or("");
            let ok = authzid.is_some_and(|a| a.is_empty() || a == user.as_bytes())
                && password.is_some_and(|p| creds.authenticate_password(user, p));
            if ok {
                Sasl::Done(Principal(user.to_string()))
            } else {
                refuse(
                    &mut resp,
                    code::SASL_AUTHENTICATION_FAILED,
                    "Authentication failed: invalid user name or password",
                );
                fail(cx, "invalid", user);
                return resp;
            }
        }
        Sasl::Scram(mechanism) => match scram::start(&creds, mechanism, bytes, None) {
            Ok((pending, server_first)) => {
                resp.auth_bytes = server_first.into_bytes().into();
                Sasl::ScramSent(Box::new(pending))
            }
            Err(e) => {
                refuse(&mut resp, code::SASL_AUTHENTICATION_FAILED, &e.to_string());
                fail(cx, "malformed", "");
                return resp;
            }
        },
        Sasl::ScramSent(pending) => {
            let user = pending.user().to_string();
            match pending.finish(bytes) {
                Ok((user, server_final)) => {
                    resp.auth_bytes = server_final.into_bytes().into();
                    Sasl::Done(Principal(user))
                }
                Err(e) => {
                    refuse(
                        &mut resp,
                        code::SASL_AUTHENTICATION_FAILED,
                        "Authentication failed: invalid credentials",
                    );
                    let reason = if e == scram::ScramError::Failed {
                        "invalid"
                    } else {
                        "malformed"
                    };
                    fail(cx, reason, &user);
                    return resp;
                }
            }
        }
        Sasl::Start | Sasl::Done(_) | Sasl::Failed => {
            refuse(
                &mut resp,
                code::ILLEGAL_SASL_STATE,
                "SaslAuthenticate without a SaslHandshake, or after authentication",
            );
            fail(cx, "state", "");
            return resp;
        }
    };
    if let Sasl::Done(p) = &next {
        tracing::debug!(peer = %cx.conn.link.peer, user = %p.0, "Kafka connection authenticated");
    }
    *cx.conn.sasl.lock() = next;
    resp
}
