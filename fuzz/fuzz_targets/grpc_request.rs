//! A gRPC request body: the first byte picks the unary RPC, the rest is
//! decoded by prost as its request and served by a real broker (one data
//! dir for the whole run), through each handler's checks of what prost
//! decoded. It must never panic or hang; broker errors are answers.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferry_broker::{BrokerConfig, BrokerState, FerryService, serve_encoded};
use libfuzzer_sys::fuzz_target;

struct Harness {
    rt: tokio::runtime::Runtime,
    service: FerryService,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig::ephemeral().with_data_dir(dir.path());
        let state = Arc::new(BrokerState::open(config).unwrap());
        state.create_topic("t", 2).unwrap();
        Harness {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            service: FerryService::new(state),
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&rpc, body)) = data.split_first() else {
        return;
    };
    let h = harness();
    let answered = h.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), serve_encoded(&h.service, rpc, body)).await
    });
    assert!(answered.is_ok(), "rpc {rpc} hung");
});
