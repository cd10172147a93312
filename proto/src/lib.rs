//! Ferry's shared protocol pieces: the record-batch codec (one format for
//! client, wire and disk), the consumer protocol's member bytes (which the
//! broker's console decodes too), the stable [`ErrorCode`] table, and the gRPC
//! service generated from `proto/ferry.proto`.

pub mod batch;
pub mod consumer_protocol;
pub mod control;
pub mod error_code;
pub mod varint;

pub use error_code::ErrorCode;

/// Generated gRPC messages and service stubs for `ferry.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("ferry.v1");
}

/// Encoded `FileDescriptorSet` of the protocol, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ferry_descriptor.bin"));

/// Milliseconds since the Unix epoch, the timestamp unit of record batches.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
