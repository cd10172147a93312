//! The broker publishes each group's lag per partition on `/metrics`, and
//! `BrokerState::consumer_lag` says the same: the high watermark less the
//! committed offset. (Its own test binary: the Prometheus recorder is
//! process-wide.)

use std::time::{Duration, Instant};

use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_client::{Client, Producer, ProducerConfig};

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The value of `ferry_consumer_lag` for one group and partition of "t".
fn lag_in(body: &str, group: &str, partition: u32) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with("ferry_consumer_lag{"))
        .find(|l| {
            l.contains(&format!("group=\"{group}\""))
                && l.contains("topic=\"t\"")
                && l.contains(&format!("partition=\"{partition}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_groups_lag_per_partition_is_the_high_watermark_less_its_commit() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut config = BrokerConfig::ephemeral();
    config.http_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let broker = EmbeddedBroker::start(config).await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("t", 2).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..10u32 {
        producer
            .send_to("t", 0, None, Some(&i.to_be_bytes()))
            .await
            .unwrap();
    }
    producer.close().await.unwrap();
    client
        .commit_offsets("billing", &[("t".into(), 0, 4), ("t".into(), 1, 0)])
        .await
        .unwrap();
    client
        .commit_offsets("audit", &[("t".into(), 0, 10)])
        .await
        .unwrap();

    let lag = broker.state().consumer_lag();
    let of = |g: &str, p: u32| {
        lag.iter()
            .find(|l| l.group == g && l.topic == "t" && l.partition == p)
            .map(|l| (l.committed, l.log_end, l.lag))
    };
    assert_eq!(of("billing", 0), Some((4, 10, 6)));
    assert_eq!(of("billing", 1), Some((0, 0, 0)));
    assert_eq!(of("audit", 0), Some((10, 10, 0)));

    // The gauge follows within a few refreshes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = tokio::task::spawn_blocking(move || scrape(port))
            .await
            .unwrap();
        let seen = (
            lag_in(&body, "billing", 0),
            lag_in(&body, "billing", 1),
            lag_in(&body, "audit", 0),
        );
        if seen == (Some(6.0), Some(0.0), Some(0.0)) {
            break;
        }
        assert!(Instant::now() < deadline, "lag gauges {seen:?} in:\n{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
