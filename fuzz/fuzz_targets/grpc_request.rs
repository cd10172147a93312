//! A gRPC request body: the first byte picks the unary RPC, the rest is
//! decoded by prost as its request and served by a real broker, through
//! each handler's checks of what prost decoded. It must never panic or
//! hang; broker errors are answers. The broker's state carries over from
//! input to input, and starts afresh every `RESET_EVERY` inputs, with the
//! smallest segments, so that a long run's topics do not fill the disk.
#![no_main]

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use ferry_broker::{BrokerConfig, BrokerState, FerryService, serve_encoded};
use ferry_storage::MIN_SEGMENT_BYTES;
use libfuzzer_sys::fuzz_target;

/// Inputs served by one broker before the next starts afresh.
const RESET_EVERY: u32 = 20_000;

struct Harness {
    rt: tokio::runtime::Runtime,
    service: FerryService,
    served: u32,
    // Dropped after the service, which holds the broker open in it.
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = BrokerConfig::ephemeral().with_data_dir(dir.path());
        config.log.segment_bytes = MIN_SEGMENT_BYTES;
        let state = Arc::new(BrokerState::open(config).unwrap());
        state.create_topic("t", 2).unwrap();
        Harness {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            service: FerryService::new(state),
            served: 0,
            _dir: dir,
        }
    }
}

static HARNESS: Mutex<Option<Harness>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let Some((&rpc, body)) = data.split_first() else {
        return;
    };
    let mut guard = HARNESS.lock().unwrap();
    if guard.as_ref().is_none_or(|h| h.served >= RESET_EVERY) {
        *guard = None;
        *guard = Some(Harness::new());
    }
    let h = guard.as_mut().unwrap();
    h.served += 1;
    let answered = h.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), serve_encoded(&h.service, rpc, body)).await
    });
    assert!(answered.is_ok(), "rpc {rpc} hung");
});
