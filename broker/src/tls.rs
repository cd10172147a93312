//! TLS on the gRPC and Kafka listeners, with rustls.
//!
//! With `tls_cert` and `tls_key` (PEM), both listeners speak TLS only: the
//! gRPC listener offers HTTP/2 by ALPN, the Kafka listener is Kafka's `SSL`
//! (or `SASL_SSL`, with a credentials file). With `tls_client_ca` as well,
//! the TLS is mutual: a client must present a certificate that chains to
//! that CA, and the certificate's subject, in RFC 4514 form
//! (`CN=alice,O=Example`), becomes the connection's [`Principal`], as
//! Kafka's default `ssl.principal.mapping.rules` makes it.
//!
//! A handshake must finish within `request_header_timeout_ms`, like the
//! first request on a plaintext connection; handshakes run beside the
//! accept loop, so a slow one holds up no other client. The files are read
//! once, at start; each is at most [`MAX_PEM_FILE_BYTES`].

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::auth::Principal;
use crate::config::BrokerConfig;
use crate::error::BrokerError;

/// Largest PEM file read for a certificate chain, a key or a CA bundle.
pub const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;
/// Most certificates in one PEM file.
pub const MAX_PEM_CERTIFICATES: usize = 1000;

/// The TLS acceptors of a broker with TLS on: one per listener, because
/// only gRPC negotiates HTTP/2.
#[derive(Clone)]
pub(crate) struct Tls {
    pub grpc: TlsAcceptor,
    pub kafka: TlsAcceptor,
    /// Whether clients must present a certificate.
    pub mutual: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("mutual", &self.mutual).finish()
    }
}

fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, BrokerError> {
    use std::io::Read;
    let bad = |m: String| BrokerError::Config(format!("{} {}: {m}", flag_of(what), path.display()));
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(bad(format!(
            "larger than {MAX_PEM_FILE_BYTES} bytes (MAX_PEM_FILE_BYTES)"
        )));
    }
    Ok(bytes)
}

fn certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let pem = read_pem(path, what)?;
    let bad = |m: String| BrokerError::Config(format!("{} {}: {m}", flag_of(what), path.display()));
    let mut out = Vec::new();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
        if out.len() == MAX_PEM_CERTIFICATES {
            return Err(bad(format!(
                "more than {MAX_PEM_CERTIFICATES} certificates (MAX_PEM_CERTIFICATES)"
            )));
        }
        out.push(c);
    }
    if out.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(out)
}

fn flag_of(what: &str) -> &'static str {
    match what {
        "certificate" => "--tls-cert",
        "key" => "--tls-key",
        _ => "--tls-client-ca",
    }
}

/// The crypto rustls uses: ring, named here so that no process-wide
/// default has to be installed.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the acceptors from the configured files, or `None` without TLS.
/// Every file problem is a configuration error naming its flag.
pub(crate) fn load(config: &BrokerConfig) -> Result<Option<Tls>, BrokerError> {
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => {
            return Err(BrokerError::Config(
                "--tls-cert and --tls-key go together".into(),
            ));
        }
    };
    let chain = certificates(cert, "certificate")?;
    let key_pem = read_pem(key, "key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        BrokerError::Config(format!(
            "--tls-key {}: not a PEM private key: {e}",
            key.display()
        ))
    })?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Config(format!("TLS: {e}")))?;
    let builder = match &config.tls_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca, "client CA")? {
                roots.add(c).map_err(|e| {
                    BrokerError::Config(format!("--tls-client-ca {}: {e}", ca.display()))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| {
                    BrokerError::Config(format!("--tls-client-ca {}: {e}", ca.display()))
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let kafka = builder.with_single_cert(chain, key).map_err(|e| {
        BrokerError::Config(format!("--tls-cert {} with --tls-key: {e}", cert.display()))
    })?;
    let mut grpc = kafka.clone();
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(Tls {
        grpc: TlsAcceptor::from(Arc::new(grpc)),
        kafka: TlsAcceptor::from(Arc::new(kafka)),
        mutual: config.tls_client_ca.is_some(),
    }))
}

/// A connection as a listener accepted it: plain TCP, or TLS over it.
pub(crate) enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, handshake done.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Runs the server side of a TLS handshake on `tcp`, within `timeout`,
/// and returns the stream with the principal its client certificate names
/// (mutual TLS). A failure is logged and counted in
/// `ferry_tls_handshake_failures_total{listener}`.
pub(crate) async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    listener: &'static str,
) -> Option<(Stream, Option<Principal>)> {
    let fail = |reason: String| {
        metrics::counter!("ferry_tls_handshake_failures_total", "listener" => listener)
            .increment(1);
        tracing::warn!(%peer, listener, error = %reason, "TLS handshake failed");
    };
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Err(_) => {
            fail(format!(
                "not finished within request_header_timeout_ms ({} ms)",
                timeout.as_millis()
            ));
            None
        }
        Ok(Err(e)) => {
            fail(e.to_string());
            None
        }
        Ok(Ok(tls)) => {
            let principal = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| subject_of(leaf.as_ref()))
                .map(Principal);
            Some((Stream::Tls(Box::new(tls)), principal))
        }
    }
}

/// The subject of a DER certificate in RFC 4514 form: the most specific
/// name first, `,` between names, `+` inside a multi-valued one, and
/// `,+"\<>;=` escaped. `None` if it does not parse or has no subject.
pub fn subject_of(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let mut names = Vec::new();
    for rdn in cert.subject().iter() {
        let mut parts = Vec::new();
        for attr in rdn.iter() {
            let oid = attr.attr_type().to_id_string();
            let key = short_name(&oid).map_or(oid.clone(), str::to_string);
            let value = attr.as_str().ok()?;
            parts.push(format!("{key}={}", escape(value)));
        }
        names.push(parts.join("+"));
    }
    names.reverse();
    let s = names.join(",");
    (!s.is_empty()).then_some(s)
}

/// The short names RFC 4514 gives attribute types, plus the ones Kafka
/// (through Java's X500Principal) prints.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, ch) in v.chars().enumerate() {
        let leading = i == 0 && (ch == ' ' || ch == '#');
        let trailing = i + 1 == v.chars().count() && ch == ' ';
        if matches!(ch, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') || leading || trailing {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_prints_most_specific_first_with_rfc4514_escapes() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "NL");
        dn.push(rcgen::DnType::OrganizationName, "Ferry, Inc.");
        dn.push(rcgen::DnType::CommonName, "alice");
        params.distinguished_name = dn;
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_of(cert.der()).as_deref(),
            Some("CN=alice,O=Ferry\\, Inc.,C=NL")
        );
        assert_eq!(subject_of(b"not a certificate"), None);
    }

    #[test]
    fn half_a_key_pair_or_a_bad_file_is_a_config_error_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "no pem here").unwrap();
        let mut c = BrokerConfig {
            tls_cert: Some(junk.clone()),
            ..BrokerConfig::default()
        };
        let e = load(&c).unwrap_err().to_string();
        assert!(e.contains("go together"), "{e}");
        c.tls_key = Some(junk.clone());
        let e = load(&c).unwrap_err().to_string();
        assert!(
            e.contains("--tls-cert") && e.contains("no PEM certificate"),
            "{e}"
        );
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_PEM_FILE_BYTES as usize + 1]).unwrap();
        c.tls_cert = Some(big);
        let e = load(&c).unwrap_err().to_string();
        assert!(e.contains("MAX_PEM_FILE_BYTES"), "{e}");
    }
}
