//! Who an HTTP request comes from, and whether a browser may send it.
//!
//! A web page on another site can make a browser send requests to the
//! console (a form or `fetch` to `127.0.0.1:7401`), with the browser's
//! saved basic credentials attached. [`same_origin`] therefore refuses a
//! request that changes state (anything but GET and HEAD) whose `Origin`
//! is not the console's own, and, on a loopback listener, any request
//! whose `Host` is a name other than `localhost` (a DNS-rebinding page
//! reaches loopback under its own name).
//!
//! Without a credentials file every
//! request is anonymous, as on the other listeners, and the ACLs (if any)
//! decide. With one, a console or API request must carry a bearer token
//! or basic credentials; anything else gets 401 with a `WWW-Authenticate`
//! challenge, so that a browser asks for a login.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
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

/// Refuses cross-site requests that change state, and foreign host names
/// on a loopback listener (see the module's documentation).
pub(super) async fn same_origin(State(http): State<Http>, req: Request, next: Next) -> Response {
    let loopback = http.listeners.http.is_some_and(|a| a.ip().is_loopback());
    if let Err(why) = check_origin(req.method(), req.headers(), loopback) {
        metrics::counter!("ferry_http_refused_total", "reason" => "origin").increment(1);
        return ApiError::new(StatusCode::FORBIDDEN, "authorization_failed", why).into_response();
    }
    next.run(req).await
}

fn check_origin(method: &Method, headers: &HeaderMap, loopback: bool) -> Result<(), String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if loopback && !local_host(host) {
        return Err(format!(
            "Host {host:?} is not this loopback listener's address; use 127.0.0.1, [::1] or localhost"
        ));
    }
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    match headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or(""))
    {
        // Not from a browser page (curl, scripts): nothing to forge.
        None => Ok(()),
        Some(origin) => {
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .unwrap_or("");
            if !host.is_empty() && authority.eq_ignore_ascii_case(host) {
                Ok(())
            } else {
                Err(format!(
                    "a {method} from the page at {origin:?} is refused: only the console's own pages may change state"
                ))
            }
        }
    }
}

/// Whether `host` (a `Host` header: name or address, and a port) names
/// this machine's loopback without a DNS lookup.
fn local_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_state_change_from_another_sites_page_is_refused() {
        let own = headers(&[
            ("host", "127.0.0.1:7401"),
            ("origin", "http://127.0.0.1:7401"),
        ]);
        assert!(check_origin(&Method::POST, &own, true).is_ok());
        let curl = headers(&[("host", "127.0.0.1:7401")]);
        assert!(check_origin(&Method::DELETE, &curl, true).is_ok());
        let forged = headers(&[
            ("host", "127.0.0.1:7401"),
            ("origin", "https://evil.example"),
        ]);
        assert!(check_origin(&Method::POST, &forged, true).is_err());
        assert!(check_origin(&Method::GET, &forged, true).is_ok());
        let null = headers(&[("host", "127.0.0.1:7401"), ("origin", "null")]);
        assert!(check_origin(&Method::POST, &null, true).is_err());
    }

    #[test]
    fn a_loopback_listener_answers_only_to_local_names() {
        for ok in [
            "127.0.0.1:7401",
            "localhost:7401",
            "[::1]:7401",
            "LOCALHOST",
            "10.0.0.5:80",
        ] {
            assert!(local_host(ok), "{ok}");
        }
        for bad in ["evil.example:7401", "rebind.attacker.test", ""] {
            assert!(!local_host(bad), "{bad}");
        }
        let rebound = headers(&[("host", "evil.example:7401")]);
        assert!(check_origin(&Method::GET, &rebound, true).is_err());
        assert!(check_origin(&Method::GET, &rebound, false).is_ok());
    }
}
