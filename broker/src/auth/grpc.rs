//! Who a gRPC request comes from. A request that carries
//! `authorization: Bearer TOKEN` is from the user the token names in the
//! credentials file; one without a token, on a mutual-TLS connection, is
//! from the subject of the client's certificate. With `--credentials`
//! and no certificate, every Ferry request (and reflection) must carry a
//! valid token. The [`Principal`] goes into the request's extensions.
//! Without credentials or mutual TLS, requests pass as they are. The
//! health service stays open, for probes.

use std::sync::Arc;

use tonic::{Request, Status};

use super::{CredentialsStore, Principal};

/// The interceptor in front of the gRPC services.
#[derive(Clone, Debug, Default)]
pub(crate) struct GrpcAuth {
    credentials: Option<Arc<CredentialsStore>>,
}

impl GrpcAuth {
    pub(crate) fn new(credentials: Option<Arc<CredentialsStore>>) -> GrpcAuth {
        GrpcAuth { credentials }
    }
}

/// Why a request was refused, for the log and the metric.
fn refuse(req: &Request<()>, reason: &'static str, message: &str) -> Status {
    metrics::counter!("ferry_auth_failures_total", "listener" => "grpc", "reason" => reason)
        .increment(1);
    let peer =
        crate::PeerInfo::of(req).map_or_else(|| "unknown".to_string(), |p| p.remote.to_string());
    tracing::warn!(%peer, reason, "refused an unauthenticated gRPC request");
    Status::unauthenticated(message)
}

impl tonic::service::Interceptor for GrpcAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let certified = crate::PeerInfo::of(&req).and_then(|p| p.principal.clone());
        let Some(store) = &self.credentials else {
            if let Some(p) = certified {
                req.extensions_mut().insert(p);
            }
            return Ok(req);
        };
        let creds = store.current();
        let header = match req.metadata().get("authorization").map(|v| v.to_str()) {
            None => {
                if let Some(p) = certified {
                    req.extensions_mut().insert(p);
                    return Ok(req);
                }
                return Err(refuse(
                    &req,
                    "missing",
                    "this broker requires a bearer token (ferry: --token or FERRY_TOKEN)",
                ));
            }
            Some(Err(_)) => return Err(refuse(&req, "malformed", "malformed authorization")),
            Some(Ok(h)) => h,
        };
        let Some(token) = header.strip_prefix("Bearer ") else {
            return Err(refuse(
                &req,
                "malformed",
                "authorization must be \"Bearer TOKEN\"",
            ));
        };
        match creds.authenticate_token(token.trim()) {
            Some(user) => {
                let principal = Principal(user.to_string());
                req.extensions_mut().insert(principal);
                Ok(req)
            }
            None => Err(refuse(&req, "invalid", "invalid token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor;

    use super::*;

    fn with_auth(value: Option<&str>) -> Request<()> {
        let mut req = Request::new(());
        if let Some(v) = value {
            req.metadata_mut()
                .insert("authorization", v.parse().unwrap());
        }
        req
    }

    #[test]
    fn only_a_known_token_passes_and_it_names_the_principal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let mut creds = super::super::Credentials::default();
        let token = creds.add_token("svc").unwrap();
        creds.save(&path).unwrap();
        let store = Arc::new(CredentialsStore::load(&path).unwrap());
        let mut auth = GrpcAuth::new(Some(store.clone()));
        let ok = auth
            .call(with_auth(Some(&format!("Bearer {token}"))))
            .unwrap();
        assert_eq!(
            ok.extensions().get::<Principal>(),
            Some(&Principal("svc".into()))
        );
        for bad in [
            None,
            Some("Bearer ferry_AAAA"),
            Some(token.as_str()),
            Some("Basic x"),
        ] {
            let e = auth.call(with_auth(bad)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        // Revoked on reload: the file without the token, reread.
        creds.remove("svc", None).unwrap();
        creds.save(&path).unwrap();
        store.reload().unwrap();
        let e = auth
            .call(with_auth(Some(&format!("Bearer {token}"))))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        // A broken file leaves the credentials in force as they were.
        std::fs::write(&path, "garbage").unwrap();
        assert!(store.reload().is_err());
        assert!(store.current().is_empty());
        // Without credentials, everything passes, with no principal.
        let mut open = GrpcAuth::default();
        let req = open.call(with_auth(None)).unwrap();
        assert!(req.extensions().get::<Principal>().is_none());
    }
}
