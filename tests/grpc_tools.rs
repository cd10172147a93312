//! Generic gRPC tools that nobody here wrote can find their way around the
//! broker: Python's grpcio with grpcio-reflection lists the services over
//! both reflection versions (v1 and v1alpha), fetches the descriptor of
//! `ferry.v1.Ferry`, and gets SERVING from the standard health check.
//! The script is `tests/python/grpc_reflection_check.py`.

mod common;

use common::{FERRY, python_with_requirements};
use ferry_testkit::BrokerProcess;

#[test]
fn grpcio_reflection_lists_ferry_and_health_over_v1_and_v1alpha_and_the_health_check_serves() {
    let python = python_with_requirements();
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(FERRY, dir.path().join("data"), "127.0.0.1:0").unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/grpc_reflection_check.py"
    );
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(broker.addr())
        .output()
        .expect("run the reflection check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(report["ok"], true, "{report}");
    for version in ["grpc.reflection.v1", "grpc.reflection.v1alpha"] {
        let services: Vec<&str> = report[version]["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert!(
            services.contains(&"ferry.v1.Ferry"),
            "{version}: {services:?}"
        );
        assert!(
            services.contains(&"grpc.health.v1.Health"),
            "{version}: {services:?}"
        );
        let methods = report[version]["methods"].as_array().unwrap();
        assert!(methods.iter().any(|m| m == "ProduceStream"), "{report}");
    }
    assert_eq!(report["health"], "SERVING");
    broker.sigterm().unwrap();
}
