//! SCRAM (RFC 5802, with SHA-256 and SHA-512 as RFC 7677 and Kafka use
//! them), the server's side: two round trips that prove the client knows
//! the password behind a stored credential, and prove to the client that
//! the server holds that credential, without the password crossing the
//! wire or being stored.
//!
//! ```text
//! client-first  n,,n=USER,r=CNONCE
//! server-first  r=CNONCE+SNONCE,s=SALT,i=ITERATIONS
//! client-final  c=biws,r=CNONCE+SNONCE,p=PROOF
//! server-final  v=SERVER_SIGNATURE
//! ```
//!
//! Channel binding is not offered (`n` or `y` only). An unknown user gets
//! a server-first like a known one, with a salt derived from the name and
//! a per-process key, and fails at the proof, so that the exchange does not
//! tell which users exist.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::credentials::{DEFAULT_SCRAM_ITERATIONS, SALT_BYTES};
use super::{Credentials, Mechanism, ScramCredential};

/// Longest SCRAM message accepted, in bytes.
pub const MAX_SCRAM_MESSAGE_BYTES: usize = 4096;
/// Random bytes in the server's part of the nonce.
const SERVER_NONCE_BYTES: usize = 18;

/// Why an exchange failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("SCRAM channel binding is not supported")]
    ChannelBinding,
    #[error("authentication failed")]
    Failed,
}

/// HMAC with the mechanism's hash.
pub(crate) fn hmac(mechanism: Mechanism, key: &[u8], msg: &[u8]) -> Vec<u8> {
    macro_rules! mac {
        ($d:ty) => {{
            let mut m = Hmac::<$d>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }};
    }
    match mechanism {
        Mechanism::ScramSha512 => mac!(Sha512),
        _ => mac!(Sha256),
    }
}

/// The mechanism's hash.
pub(crate) fn hash(mechanism: Mechanism, data: &[u8]) -> Vec<u8> {
    match mechanism {
        Mechanism::ScramSha512 => Sha512::digest(data).to_vec(),
        _ => Sha256::digest(data).to_vec(),
    }
}

/// SaltedPassword: PBKDF2 with the mechanism's HMAC.
pub(crate) fn salted_password(
    mechanism: Mechanism,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> Vec<u8> {
    match mechanism {
        Mechanism::ScramSha512 => {
            let mut out = vec![0u8; 64];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
            out
        }
        _ => {
            let mut out = vec![0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
            out
        }
    }
}

/// `=2C` and `=3D` back to `,` and `=` (RFC 5802 §5.1); any other `=` is
/// malformed.
fn decode_name(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in the user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn text(msg: &[u8]) -> Result<&str, ScramError> {
    if msg.len() > MAX_SCRAM_MESSAGE_BYTES {
        return Err(ScramError::Malformed("message too long"));
    }
    std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))
}

/// The salt shown for a user that does not exist: stable per name within
/// a process, unpredictable from outside it.
fn unknown_user_salt(name: &str) -> Vec<u8> {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        k
    });
    hmac(Mechanism::ScramSha256, key, name.as_bytes())[..SALT_BYTES].to_vec()
}

/// An exchange after the server-first message, waiting for the client's
/// final one.
#[derive(Debug)]
pub struct ServerFirst {
    mechanism: Mechanism,
    user: String,
    credential: Option<ScramCredential>,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// Starts an exchange: reads the client-first message and returns the
/// server-first one. `server_nonce` is `None` outside tests (a random one
/// is drawn).
pub fn start(
    credentials: &Credentials,
    mechanism: Mechanism,
    client_first: &[u8],
    server_nonce: Option<&str>,
) -> Result<(ServerFirst, String), ScramError> {
    let msg = text(client_first)?;
    // gs2-header: a channel-binding flag, an optional authzid, then the
    // bare message.
    let (flag, rest) = msg
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("bad channel-binding flag")),
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    let gs2_header = format!("{flag},{authzid},");
    let mut attrs = bare.split(',');
    let user = attrs
        .next()
        .and_then(|a| a.strip_prefix("n="))
        .ok_or(ScramError::Malformed("no user name"))?;
    let user = decode_name(user)?;
    if let Some(a) = authzid.strip_prefix("a=") {
        if decode_name(a)? != user {
            return Err(ScramError::Failed);
        }
    } else if !authzid.is_empty() {
        return Err(ScramError::Malformed("bad authzid"));
    }
    let client_nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
        .ok_or(ScramError::Malformed("no client nonce"))?;
    // Extensions: none is understood, and a mandatory one (m=) or Kafka's
    // delegation-token one cannot be honoured.
    for a in attrs {
        if a.starts_with("m=") || a.starts_with("tokenauth=") {
            return Err(ScramError::Failed);
        }
    }
    let server_nonce = match server_nonce {
        Some(n) => n.to_string(),
        None => {
            let mut b = [0u8; SERVER_NONCE_BYTES];
            rand::rng().fill_bytes(&mut b);
            STANDARD.encode(b)
        }
    };
    let nonce = format!("{client_nonce}{server_nonce}");
    let credential = credentials.scram(&user, mechanism).cloned();
    let (salt, iterations) = match &credential {
        Some(c) => (c.salt.clone(), c.iterations),
        None => (unknown_user_salt(&user), DEFAULT_SCRAM_ITERATIONS),
    };
    let server_first = format!("r={nonce},s={},i={iterations}", STANDARD.encode(&salt));
    Ok((
        ServerFirst {
            mechanism,
            user,
            credential,
            gs2_header,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
        },
        server_first,
    ))
}

impl ServerFirst {
    /// The user the exchange is for (not yet authenticated).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Checks the client-final message's proof; on success returns the
    /// authenticated user and the server-final message.
    pub fn finish(self, client_final: &[u8]) -> Result<(String, String), ScramError> {
        let msg = text(client_final)?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding"))?;
        if STANDARD.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Failed);
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        // RFC 5802 has the client echo the server's nonce. librdkafka 2.0
        // (Debian 12's, under kcat) puts its own nonce in front of it once
        // more; Kafka accepts any nonce that ends with the server's, and so
        // does Ferry. The server's random part is still there, and the
        // proof covers the message as the client sent it.
        if !nonce.ends_with(&self.nonce) {
            return Err(ScramError::Failed);
        }
        let proof = STANDARD
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let Some(cred) = &self.credential else {
            return Err(ScramError::Failed);
        };
        let signature = hmac(self.mechanism, &cred.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(ScramError::Failed);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        if !bool::from(hash(self.mechanism, &client_key).ct_eq(&cred.stored_key)) {
            return Err(ScramError::Failed);
        }
        let server_signature = hmac(self.mechanism, &cred.server_key, auth_message.as_bytes());
        Ok((
            self.user,
            format!("v={}", STANDARD.encode(server_signature)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's side, for the tests: the proof and the expected server
    /// signature for `password`.
    fn client_final(
        mechanism: Mechanism,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
    ) -> (String, String) {
        let nonce = server_first
            .split(',')
            .next()
            .unwrap()
            .strip_prefix("r=")
            .unwrap();
        client_final_echoing(mechanism, password, client_first_bare, server_first, nonce)
    }

    /// [`client_final`] with `nonce` as the nonce the client sends back.
    fn client_final_echoing(
        mechanism: Mechanism,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        nonce: &str,
    ) -> (String, String) {
        let attrs: Vec<&str> = server_first.split(',').collect();
        let salt = STANDARD
            .decode(attrs[1].strip_prefix("s=").unwrap())
            .unwrap();
        let iterations: u32 = attrs[2].strip_prefix("i=").unwrap().parse().unwrap();
        let salted = salted_password(mechanism, password.as_bytes(), &salt, iterations);
        let client_key = hmac(mechanism, &salted, b"Client Key");
        let stored_key = hash(mechanism, &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac(mechanism, &stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(mechanism, &salted, b"Server Key");
        (
            format!("{without_proof},p={}", STANDARD.encode(proof)),
            format!(
                "v={}",
                STANDARD.encode(hmac(mechanism, &server_key, auth.as_bytes()))
            ),
        )
    }

    /// RFC 7677 §3, message for message.
    #[test]
    fn the_rfc_7677_exchange_goes_through_byte_for_byte() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let cred = ScramCredential::derive(Mechanism::ScramSha256, b"pencil", &salt, 4096);
        let creds = Credentials::with_scram_for_tests("user", Mechanism::ScramSha256, cred);
        let (pending, server_first) = start(
            &creds,
            Mechanism::ScramSha256,
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            Some("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"),
        )
        .unwrap();
        assert_eq!(
            server_first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let (user, server_final) = pending
            .finish(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(user, "user");
        assert_eq!(
            server_final,
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn both_hashes_accept_the_password_and_refuse_others() {
        for mechanism in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
            let mut creds = Credentials::default();
            creds.add_scram("al,i=ce", mechanism, b"s3cret").unwrap();
            let bare = "n=al=2Ci=3Dce,r=abc123";
            for (password, ok) in [("s3cret", true), ("s3cre", false), ("S3cret", false)] {
                let (pending, sf) =
                    start(&creds, mechanism, format!("n,,{bare}").as_bytes(), None).unwrap();
                assert_eq!(pending.user(), "al,i=ce");
                let (cf, expected) = client_final(mechanism, password, bare, &sf);
                match pending.finish(cf.as_bytes()) {
                    Ok((user, server_final)) => {
                        assert!(ok, "{mechanism} accepted {password:?}");
                        assert_eq!(user, "al,i=ce");
                        assert_eq!(server_final, expected);
                    }
                    Err(e) => {
                        assert!(!ok, "{mechanism} refused {password:?}: {e}");
                        assert_eq!(e, ScramError::Failed);
                    }
                }
            }
        }
    }

    #[test]
    fn an_unknown_user_looks_like_a_known_one_until_the_proof_fails() {
        let mut creds = Credentials::default();
        creds
            .add_scram("alice", Mechanism::ScramSha256, b"pw")
            .unwrap();
        let m = Mechanism::ScramSha256;
        let (_, first) = start(&creds, m, b"n,,n=mallory,r=x", None).unwrap();
        let (_, again) = start(&creds, m, b"n,,n=mallory,r=x", None).unwrap();
        let salt = |s: &str| s.split(',').nth(1).unwrap().to_string();
        assert_eq!(salt(&first), salt(&again), "the fake salt is stable");
        assert!(first.ends_with(",i=4096"));
        let (pending, sf) = start(&creds, m, b"n,,n=mallory,r=x", None).unwrap();
        let (cf, _) = client_final(m, "pw", "n=mallory,r=x", &sf);
        assert_eq!(
            pending.finish(cf.as_bytes()).unwrap_err(),
            ScramError::Failed
        );
    }

    #[test]
    fn malformed_or_tampered_messages_are_refused() {
        let mut creds = Credentials::default();
        creds.add_scram("u", Mechanism::ScramSha256, b"pw").unwrap();
        let m = Mechanism::ScramSha256;
        for (first, want) in [
            (&b"p=tls-unique,,n=u,r=x"[..], ScramError::ChannelBinding),
            (
                b"x,,n=u,r=x",
                ScramError::Malformed("bad channel-binding flag"),
            ),
            (b"n,,r=x", ScramError::Malformed("no user name")),
            (b"n,,n=u", ScramError::Malformed("no client nonce")),
            (
                b"n,,n=u=2X,r=x",
                ScramError::Malformed("bad escape in the user name"),
            ),
            (b"n,a=v,n=u,r=x", ScramError::Failed),
            (b"n,,n=u,r=x,m=ext", ScramError::Failed),
            (b"n,,n=u,r=x,tokenauth=true", ScramError::Failed),
            (b"\xff", ScramError::Malformed("not UTF-8")),
        ] {
            assert_eq!(
                start(&creds, m, first, None).unwrap_err(),
                want,
                "{first:?}"
            );
        }
        let long = vec![b'a'; MAX_SCRAM_MESSAGE_BYTES + 1];
        assert!(start(&creds, m, &long, None).is_err());

        // One server nonce throughout, so that only the tampering differs.
        let bare = "n=u,r=x";
        let (pending, sf) = start(&creds, m, b"n,,n=u,r=x", Some("S")).unwrap();
        let (good, _) = client_final(m, "pw", bare, &sf);
        // Another nonce, another binding, a proof cut short, no proof.
        for tampered in [
            good.replacen("r=xS", "r=yS", 1),
            good.replacen("c=biws", "c=eSws", 1),
            good[..good.len() - 8].to_string(),
            "c=biws,r=xS".to_string(),
        ] {
            let (p, _) = start(&creds, m, b"n,,n=u,r=x", Some("S")).unwrap();
            assert!(p.finish(tampered.as_bytes()).is_err(), "{tampered}");
        }
        assert!(pending.finish(good.as_bytes()).is_ok());
    }

    /// librdkafka 2.0 sends back its own nonce, then the whole server
    /// nonce: accepted, as Kafka accepts it. A nonce that lacks the
    /// server's part is not.
    #[test]
    fn a_client_nonce_repeated_before_the_server_nonce_is_accepted() {
        let m = Mechanism::ScramSha256;
        let cred = ScramCredential::derive(m, b"pw", b"salt-salt", 4096);
        let creds = Credentials::with_scram_for_tests("u", m, cred);
        for (echo, ok) in [("xxS", true), ("x", false), ("S", false), ("xSx", false)] {
            let (pending, sf) = start(&creds, m, b"n,,n=u,r=x", Some("S")).unwrap();
            let (msg, _) = client_final_echoing(m, "pw", "n=u,r=x", &sf, echo);
            assert_eq!(pending.finish(msg.as_bytes()).is_ok(), ok, "{echo}");
        }
    }
}
