//! Arbitrary bytes as the protobuf body of every unary RPC, served by a
//! real broker: prost's decode, then each handler's checks of what it
//! decoded. No input may panic, hang or break the broker: afterwards it
//! still creates a topic, appends and reads back. The cargo-fuzz target
//! `grpc_request` runs the same path for longer (scripts/fuzz.sh).

use std::sync::Arc;
use std::time::Duration;

use ferry_broker::{BrokerConfig, BrokerState, FUZZED_RPCS, FerryService, serve_encoded};
use proptest::prelude::*;
use prost::Message;

fn valid_produce(topic: &str) -> Vec<u8> {
    let mut b = ferry_proto::batch::BatchBuilder::new(1);
    b.push(1, None, Some(b"v"), &[]);
    ferry_proto::v1::ProduceRequest {
        correlation_id: 1,
        topic: topic.into(),
        partition: 0,
        acks: 0,
        batch: b.finish(),
    }
    .encode_to_vec()
}

#[test]
fn arbitrary_request_bodies_never_panic_hang_or_break_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    // The smallest segments: the fuzzed requests create topics.
    let mut config = BrokerConfig::ephemeral().with_data_dir(dir.path());
    config.log.segment_bytes = ferry_storage::MIN_SEGMENT_BYTES;
    let state = Arc::new(BrokerState::open(config).unwrap());
    let service = FerryService::new(state.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Names the fuzzed requests can hit: a topic and a group that exist.
    state.create_topic("t", 2).unwrap();
    let serve = |rpc: u8, body: &[u8]| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), serve_encoded(&service, rpc, body))
                .await
                .map(|_| ())
                .map_err(|_| format!("rpc {rpc} did not answer within 5 s: {body:?}"))
        })
    };
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 2000,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    });
    let strategy = (
        0..FUZZED_RPCS,
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            // Mutations of a valid request, which decode more often.
            (proptest::collection::vec((0usize..64, any::<u8>()), 0..4)).prop_map(|edits| {
                let mut b = valid_produce("t");
                for (i, v) in edits {
                    let n = b.len();
                    b[i % n] = v;
                }
                b
            }),
        ],
    );
    runner
        .run(&strategy, |(rpc, body)| {
            serve(rpc, &body).map_err(TestCaseError::fail)?;
            Ok(())
        })
        .unwrap();
    // Still serving.
    state.create_topic("after", 1).unwrap();
    serve(4, &valid_produce("after")).unwrap();
    assert_eq!(
        state.topic("after").unwrap().partitions[0]
            .log
            .next_offset(),
        1
    );
}
