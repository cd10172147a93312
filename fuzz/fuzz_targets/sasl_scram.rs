//! A SCRAM exchange's two client messages, as a Kafka client sends them in
//! SaslAuthenticate: the server side must refuse or accept, never panic.
//! The first byte picks the hash, the second where the input splits into
//! the client-first and client-final messages.
#![no_main]

use std::sync::OnceLock;

use ferry_broker::auth::{Credentials, Mechanism, scram};
use libfuzzer_sys::fuzz_target;

fn credentials() -> &'static Credentials {
    static CREDS: OnceLock<Credentials> = OnceLock::new();
    CREDS.get_or_init(|| {
        let mut c = Credentials::default();
        c.add_scram("user", Mechanism::ScramSha256, b"pencil").unwrap();
        c.add_scram("user", Mechanism::ScramSha512, b"pencil").unwrap();
        c
    })
}

fuzz_target!(|data: &[u8]| {
    let [pick, at, rest @ ..] = data else {
        return;
    };
    let mechanism = if pick & 1 == 0 {
        Mechanism::ScramSha256
    } else {
        Mechanism::ScramSha512
    };
    let at = usize::from(*at).min(rest.len());
    let (first, last) = rest.split_at(at);
    if let Ok((pending, _)) = scram::start(credentials(), mechanism, first, Some("S")) {
        let _ = pending.finish(last);
    }
});
