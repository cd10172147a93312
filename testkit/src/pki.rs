//! Throwaway certificates for TLS tests: a CA, a broker certificate for
//! `127.0.0.1` and `localhost`, a client certificate it signed, and one
//! from a CA the broker does not trust. Written as PEM files, as a user
//! would hand them to `ferry broker --tls-cert` and the clients.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// The client certificate's subject, as the broker names its principal.
pub const CLIENT_SUBJECT: &str = "CN=alice,O=Ferry tests";

/// The PEM files of a test PKI.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate that signed the broker's and the client's.
    pub ca: PathBuf,
    /// The broker's certificate and key.
    pub server_cert: PathBuf,
    /// The broker's key.
    pub server_key: PathBuf,
    /// A client certificate with subject [`CLIENT_SUBJECT`].
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// A client certificate from another CA, which the broker must refuse.
    pub rogue_cert: PathBuf,
    /// Its key.
    pub rogue_key: PathBuf,
}

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    let cert = p.self_signed(&key).expect("CA certificate");
    Ca { cert, key }
}

fn leaf(
    ca: &Ca,
    dn: DistinguishedName,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().expect("leaf key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
    p.distinguished_name = dn;
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![usage];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = p
        .signed_by(&key, &ca.cert, &ca.key)
        .expect("leaf certificate");
    (cert.pem(), key.serialize_pem())
}

fn client_dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Ferry tests");
    dn.push(DnType::CommonName, cn);
    dn
}

impl TestPki {
    /// The `ferry broker` flags that serve TLS with these files:
    /// `--tls-cert` and `--tls-key`, and `--tls-client-ca` when `mutual`.
    pub fn broker_flags(&self, mutual: bool) -> Vec<std::ffi::OsString> {
        let mut flags: Vec<std::ffi::OsString> = vec![
            "--tls-cert".into(),
            self.server_cert.clone().into(),
            "--tls-key".into(),
            self.server_key.clone().into(),
        ];
        if mutual {
            flags.extend(["--tls-client-ca".into(), self.ca.clone().into()]);
        }
        flags
    }

    /// Generates a fresh PKI and writes its files into `dir`.
    pub fn write(dir: &Path) -> TestPki {
        let root = ca("Ferry test CA");
        let mut server_dn = DistinguishedName::new();
        server_dn.push(DnType::CommonName, "ferry broker");
        let (server_cert, server_key) = leaf(
            &root,
            server_dn,
            vec![
                SanType::IpAddress([127, 0, 0, 1].into()),
                SanType::DnsName("localhost".try_into().expect("dns name")),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            &root,
            client_dn("alice"),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let other = ca("Someone else's CA");
        let (rogue_cert, rogue_key) = leaf(
            &other,
            client_dn("mallory"),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let put = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        TestPki {
            ca: put("ca.pem", &root.cert.pem()),
            server_cert: put("server.pem", &server_cert),
            server_key: put("server-key.pem", &server_key),
            client_cert: put("client.pem", &client_cert),
            client_key: put("client-key.pem", &client_key),
            rogue_cert: put("rogue.pem", &rogue_cert),
            rogue_key: put("rogue-key.pem", &rogue_key),
        }
    }
}
