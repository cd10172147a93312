//! The delivery-semantics lab, small: every scenario and mode end to end
//! under the fault schedule, each mode checked against its guarantee.

use ferry_lab::{LabConfig, LabMode, Scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_keeps_its_guarantee_and_plain_at_least_once_double_charges() {
    let seed = ferry_testkit::seed();
    // Each cell's consumer crashes before its first commit, at least.
    let config = LabConfig {
        records: 300,
        ..LabConfig::fast(seed)
    };
    let report = ferry_lab::run(&config).await;
    let table = report.table();
    eprintln!("{table}");
    assert!(report.all_held(), "{table}");
    assert_eq!(report.rows.len(), 5, "{table}");
    for row in &report.rows {
        assert_eq!(row.produced, 300, "{table}");
        assert_eq!(row.lost, 0, "{table}");
        assert!(
            row.records_per_sec > 0.0 && row.p99_ms >= row.p50_ms,
            "{table}"
        );
        assert!(row.faults.contains("1 broker restart"), "{table}");
    }
    let row = |scenario, mode| {
        report
            .rows
            .iter()
            .find(|r| r.scenario == scenario && r.mode == mode)
            .unwrap()
    };
    // Without an idempotent sink, every redelivered order is charged again.
    let plain = row(Scenario::Orders, LabMode::AtLeastOnce);
    assert!(plain.duplicates_delivered > 0, "{table}");
    assert_eq!(
        plain.duplicates_in_sink, plain.duplicates_delivered,
        "{table}"
    );
    assert_eq!(plain.sink_rows, 300 + plain.duplicates_delivered, "{table}");
    // The idempotent sinks absorb every repeat: one row per event (trips:
    // per trip).
    for scenario in Scenario::ALL {
        let r = row(scenario, LabMode::AtLeastOnceSink);
        assert!(r.duplicates_delivered > 0, "{table}");
        assert_eq!(r.duplicates_absorbed, r.duplicates_delivered, "{table}");
        assert_eq!(r.duplicates_in_sink, 0, "{table}");
        let rows = if scenario == Scenario::Trips { 15 } else { 300 };
        assert_eq!(r.sink_rows, rows, "{table}");
    }
    // Exactly-once: what crashes repeat, the aborted transactions absorb.
    let eos = row(Scenario::Orders, LabMode::ExactlyOnce);
    assert_eq!((eos.sink_rows, eos.duplicates_in_sink), (300, 0), "{table}");
    assert!(eos.duplicates_absorbed > 0, "{table}");

    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("lab.svg");
    report.chart_svg(&svg).unwrap();
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 5);
    assert!(json["ratios"]["exactly_once_vs_at_least_once_sink"].is_number());
}
