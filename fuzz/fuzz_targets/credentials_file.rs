//! A credentials file's text through the parser and its checks: a
//! malformed file must be an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(creds) = ferry_broker::auth::Credentials::parse(text)
    {
        // What parses must write back and parse to the same set.
        let again = ferry_broker::auth::Credentials::parse(&creds.to_toml())
            .expect("a parsed file writes back parseable");
        assert_eq!(again, creds);
    }
});
