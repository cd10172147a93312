//! Who an HTTP request comes from. Without a credentials file every
//! request is anonymous, as on the other listeners, and the ACLs (if any)
//! decide. With one, a console or API request must carry a bearer token
//! or basic credentials; anything else gets 401 with a `WWW-Authenticate`
//! challenge, so that a browser asks for a login.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::Http;
use super::api::ApiError;
use crate::auth::Principal;
use crate::auth::acl::Caller;

/// Puts the request's [`Caller`] in its extensions, or refuses it.
pub(super) async fn authenticate(
    State(http): State<Http>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let principal = match &http.credentials {
        None => None,
        Some(store) => {
            let header = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap_or(""));
            match header.map(|h| check(&store.current(), h)) {
                Some(Some(p)) => Some(p),
                Some(None) => return refuse(peer, "invalid", "invalid credentials"),
                None => {
                    return refuse(
                        peer,
                        "missing",
                        "this broker requires a login: a bearer token or a user name and password",
                    );
                }
            }
        }
    };
    req.extensions_mut().insert(Caller {
        principal,
        host: Some(peer.ip()),
    });
    next.run(req).await
}

/// The principal an `Authorization` header's value names, if it is valid.
fn check(creds: &crate::auth::Credentials, value: &str) -> Option<Principal> {
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return creds
            .authenticate_token(rest.trim())
            .map(|u| Principal(u.to_string()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest.trim()).ok()?;
    let text = std::str::from_utf8(&decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    if creds.authenticate_password(user, password.as_bytes()) {
        return Some(Principal(user.to_string()));
    }
    // A token as the password: the token names its own user.
    creds
        .authenticate_token(password)
        .map(|u| Principal(u.to_string()))
}

fn refuse(peer: SocketAddr, reason: &'static str, message: &str) -> Response {
    metrics::counter!("ferry_auth_failures_total", "listener" => "http", "reason" => reason)
        .increment(1);
    tracing::warn!(%peer, reason, "refused an unauthenticated HTTP request");
    let mut resp =
        ApiError::new(StatusCode::UNAUTHORIZED, "authentication_failed", message).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"ferry\", charset=\"UTF-8\""),
    );
    resp
}
