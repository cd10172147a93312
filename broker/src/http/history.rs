//! The console's recent past: every [`HISTORY_INTERVAL`] the sampler reads
//! the broker's byte counters, each partition's high watermark and every
//! group's lag, and keeps the last [`HISTORY_SAMPLES`] readings. Rates are
//! differences between consecutive readings, so they follow what the
//! broker did, not what a client asked for.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::RwLock;

use crate::state::BrokerState;

/// Time between two readings.
pub const HISTORY_INTERVAL: Duration = Duration::from_secs(1);
/// Readings kept: five minutes at one a second.
pub const HISTORY_SAMPLES: usize = 300;

/// One reading.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    /// When, in ms since the epoch.
    pub at_ms: i64,
    /// Per topic: bytes appended, bytes fetched, and the sum of its
    /// partitions' high watermarks (records and markers appended).
    pub topics: BTreeMap<String, TopicCounters>,
    /// Per group: the sum of its lag over its partitions.
    pub group_lag: BTreeMap<String, u64>,
}

/// One topic's counters at a reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TopicCounters {
    pub produced_bytes: u64,
    pub fetched_bytes: u64,
    pub offsets: u64,
}

/// Rates between two readings, per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Rates {
    pub produce_bytes: f64,
    pub fetch_bytes: f64,
    pub produce_records: f64,
}

impl Rates {
    fn between(a: &TopicCounters, b: &TopicCounters, secs: f64) -> Rates {
        // A topic deleted and made again restarts its counters: no rate.
        let d = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
        Rates {
            produce_bytes: d(a.produced_bytes, b.produced_bytes),
            fetch_bytes: d(a.fetched_bytes, b.fetched_bytes),
            produce_records: d(a.offsets, b.offsets),
        }
    }

    fn add(&mut self, other: Rates) {
        self.produce_bytes += other.produce_bytes;
        self.fetch_bytes += other.fetch_bytes;
        self.produce_records += other.produce_records;
    }
}

/// The readings, oldest first.
#[derive(Debug, Default)]
pub(crate) struct History {
    samples: RwLock<VecDeque<Arc<Sample>>>,
}

impl History {
    fn push(&self, s: Sample) {
        let mut samples = self.samples.write();
        if samples.len() == HISTORY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(Arc::new(s));
    }

    fn snapshot(&self) -> Vec<Arc<Sample>> {
        self.samples.read().iter().cloned().collect()
    }

    /// The broker's rates over time (all topics, or only `topic`): one
    /// point per pair of consecutive readings, at the later one's time.
    pub(crate) fn rates(&self, topic: Option<&str>) -> Vec<(i64, Rates)> {
        let samples = self.snapshot();
        samples
            .windows(2)
            .map(|w| {
                let secs = ((w[1].at_ms - w[0].at_ms) as f64 / 1000.0).max(0.001);
                let mut total = Rates::default();
                for (name, now) in &w[1].topics {
                    if topic.is_some_and(|t| t != name) {
                        continue;
                    }
                    if let Some(before) = w[0].topics.get(name) {
                        total.add(Rates::between(before, now, secs));
                    }
                }
                (w[1].at_ms, total)
            })
            .collect()
    }

    /// The latest rates of one topic, or all of them.
    pub(crate) fn current_rates(&self, topic: Option<&str>) -> Rates {
        self.rates(topic).last().map(|r| r.1).unwrap_or_default()
    }

    /// A group's total lag at each reading.
    pub(crate) fn group_lag(&self, group: &str) -> Vec<(i64, u64)> {
        self.snapshot()
            .iter()
            .filter_map(|s| s.group_lag.get(group).map(|l| (s.at_ms, *l)))
            .collect()
    }
}

/// Reads the broker into `history` every [`HISTORY_INTERVAL`]; also runs
/// the Prometheus recorder's upkeep.
pub(crate) async fn run(
    state: Arc<BrokerState>,
    history: Arc<History>,
    prometheus: Option<&'static PrometheusHandle>,
) {
    let mut tick = tokio::time::interval(HISTORY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if state.is_shutting_down() {
            return;
        }
        history.push(read(&state));
        if let Some(h) = prometheus {
            h.run_upkeep();
        }
    }
}

fn read(state: &BrokerState) -> Sample {
    let topics = state
        .topics()
        .iter()
        .map(|t| {
            let mut c = TopicCounters::default();
            for p in &t.partitions {
                c.produced_bytes += p.produced_bytes();
                c.fetched_bytes += p.fetched_bytes();
                c.offsets += p.log.next_offset();
            }
            (t.name.to_string(), c)
        })
        .collect();
    let mut group_lag = BTreeMap::new();
    for l in state.consumer_lag() {
        *group_lag.entry(l.group).or_insert(0) += l.lag;
    }
    Sample {
        at_ms: ferry_proto::now_ms(),
        topics,
        group_lag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: i64, produced: u64, offsets: u64) -> Sample {
        let mut topics = BTreeMap::new();
        topics.insert(
            "t".to_string(),
            TopicCounters {
                produced_bytes: produced,
                fetched_bytes: 0,
                offsets,
            },
        );
        Sample {
            at_ms,
            topics,
            group_lag: BTreeMap::new(),
        }
    }

    #[test]
    fn rates_are_differences_over_the_time_between_readings() {
        let h = History::default();
        h.push(sample(1_000, 0, 0));
        h.push(sample(3_000, 4_000, 10));
        let r = h.rates(None);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, 3_000);
        assert_eq!(r[0].1.produce_bytes, 2_000.0);
        assert_eq!(r[0].1.produce_records, 5.0);
        assert_eq!(h.current_rates(Some("other")), Rates::default());
    }

    #[test]
    fn a_counter_that_restarts_gives_no_negative_rate() {
        let h = History::default();
        h.push(sample(1_000, 5_000, 50));
        h.push(sample(2_000, 100, 1));
        assert_eq!(h.current_rates(None), Rates::default());
    }

    #[test]
    fn only_the_last_readings_are_kept() {
        let h = History::default();
        for i in 0..HISTORY_SAMPLES as i64 + 10 {
            h.push(sample(i * 1000, 0, 0));
        }
        let kept = h.snapshot();
        assert_eq!(kept.len(), HISTORY_SAMPLES);
        assert_eq!(kept[0].at_ms, 10_000);
    }
}
