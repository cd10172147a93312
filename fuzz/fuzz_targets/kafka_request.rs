//! A Kafka request frame (the bytes after the 4-byte size) through the
//! checks and the decode a connection runs: key and version, header,
//! bounds guard, body, and every record batch of a Produce. It must never
//! panic, abort or allocate past what its input justifies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    let _ = ferry_broker::decode_kafka_request(frame);
});
