//! [`DedupCache`]: drops repeats of recently seen event ids in memory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::{EventId, Sink, SinkError, Written, count_absorbed};

/// Counter of ids a [`DedupCache`] evicted for space before their TTL ran
/// out: each one is a window through which a repeat can get past.
pub const DEDUP_EVICTIONS_METRIC: &str = "ferry_sink_dedup_evictions_total";

/// What a [`DedupCache`] has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DedupStats {
    /// Repeats dropped.
    pub absorbed: u64,
    /// Ids dropped for space before their TTL ran out.
    pub evictions: u64,
    /// Ids dropped because their TTL ran out.
    pub expired: u64,
}

/// Remembers the event ids it passed on for a TTL, in at most `capacity`
/// entries, and drops items whose id it remembers; the rest go to the
/// inner sink.
///
/// # The window
///
/// The cache is a best-effort filter, not a guarantee:
///
/// - an id is remembered for `ttl` from the write that first passed it on;
///   a repeat that arrives later gets through;
/// - when `capacity` ids are remembered, a new one evicts the oldest, even
///   inside its TTL (counted in [`DEDUP_EVICTIONS_METRIC`]); a repeat of an
///   evicted id gets through;
/// - the memory dies with the process: after a restart every repeat gets
///   through once.
///
/// So size `ttl` above the longest redelivery delay you expect (a
/// consumer's restart plus the uncommitted span it reads again) and
/// `capacity` above the ids that arrive in one `ttl`, and watch the
/// eviction counter. Where no repeat may ever pass, use a
/// [`UniqueSink`](super::UniqueSink).
///
/// Ids are remembered only after the inner sink applied them: a failed
/// write leaves nothing behind, so its retry is applied, not absorbed.
///
/// ```
/// use std::time::{Duration, Instant};
/// use ferry_client::sink::DedupCache;
///
/// let mut seen = DedupCache::new((), Duration::from_secs(10), 1000);
/// let t0 = Instant::now();
/// assert!(seen.check_and_insert("e-1", t0)); // new
/// assert!(!seen.check_and_insert("e-1", t0 + Duration::from_secs(9))); // a repeat: dropped
/// assert!(seen.check_and_insert("e-1", t0 + Duration::from_secs(11))); // past the TTL: gets through
/// ```
#[derive(Debug)]
pub struct DedupCache<S> {
    inner: S,
    ttl: Duration,
    capacity: usize,
    /// Id → when it was remembered.
    seen: HashMap<String, Instant>,
    /// Ids in the order they were remembered (each at most once).
    order: VecDeque<(Instant, String)>,
    stats: DedupStats,
}

impl<S> DedupCache<S> {
    /// A cache of at most `capacity` ids (at least 1), each kept for
    /// `ttl`, in front of `inner`.
    pub fn new(inner: S, ttl: Duration, capacity: usize) -> DedupCache<S> {
        DedupCache {
            inner,
            ttl,
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
            stats: DedupStats::default(),
        }
    }

    /// The inner sink.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The inner sink, mutably.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Ids remembered now (expired ones may linger until the next call).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Counts so far.
    pub fn stats(&self) -> DedupStats {
        self.stats
    }

    /// Whether `id` is remembered at `now` (within its TTL).
    pub fn contains(&self, id: &str, now: Instant) -> bool {
        self.seen
            .get(id)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.ttl)
    }

    /// `true` and remembers `id` if it is new at `now` (never seen, or
    /// seen longer than the TTL ago); `false`, counted as absorbed, if it
    /// is a repeat. A repeat does not extend the id's TTL.
    pub fn check_and_insert(&mut self, id: &str, now: Instant) -> bool {
        self.expire(now);
        if self.contains(id, now) {
            self.stats.absorbed += 1;
            count_absorbed("dedup", 1);
            return false;
        }
        self.remember(id, now);
        true
    }

    fn remember(&mut self, id: &str, now: Instant) {
        if self.seen.contains_key(id) {
            // Expired but not yet swept: drop the old entry first.
            self.order.retain(|(_, i)| i != id);
            self.seen.remove(id);
        }
        let mut evicted = 0;
        while self.seen.len() >= self.capacity {
            let Some((_, old)) = self.order.pop_front() else {
                break;
            };
            self.seen.remove(&old);
            evicted += 1;
        }
        if evicted > 0 {
            self.stats.evictions += evicted;
            metrics::counter!(DEDUP_EVICTIONS_METRIC).increment(evicted);
        }
        self.seen.insert(id.to_owned(), now);
        self.order.push_back((now, id.to_owned()));
    }

    /// Forgets the ids whose TTL ran out by `now`.
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.ttl {
                break;
            }
            let (_, id) = self.order.pop_front().expect("front exists");
            self.seen.remove(&id);
            self.stats.expired += 1;
        }
    }
}

impl<S> Sink for DedupCache<S>
where
    S: Sink + Send,
    S::Item: EventId + Clone + Send + Sync,
{
    type Item = S::Item;

    /// Passes the items whose id is new (also within the batch) to the
    /// inner sink, then remembers them; drops the rest.
    async fn write(&mut self, items: &[S::Item]) -> Result<Written, SinkError> {
        let now = Instant::now();
        self.expire(now);
        let mut fresh: Vec<S::Item> = Vec::with_capacity(items.len());
        let mut absorbed = 0u64;
        let mut in_batch = HashSet::with_capacity(items.len());
        for item in items {
            let id = item.event_id();
            if self.contains(id, now) || !in_batch.insert(id) {
                absorbed += 1;
            } else {
                fresh.push(item.clone());
            }
        }
        let mut written = self.inner.write(&fresh).await?;
        for item in &fresh {
            self.remember(item.event_id(), now);
        }
        self.stats.absorbed += absorbed;
        count_absorbed("dedup", absorbed);
        written.absorbed += absorbed;
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Event;
    use std::future::Future;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn a_repeat_inside_the_ttl_is_dropped_and_one_past_it_gets_through() {
        let mut cache = DedupCache::new((), TTL, 100);
        let t0 = Instant::now();
        assert!(cache.check_and_insert("a", t0));
        // Inside the window, up to its last instant.
        assert!(!cache.check_and_insert("a", t0 + TTL - Duration::from_millis(1)));
        // The window is from the first sight: the repeat did not extend it.
        assert!(cache.check_and_insert("a", t0 + TTL));
        // ... and that pass opens a new window.
        assert!(!cache.check_and_insert("a", t0 + TTL + Duration::from_secs(1)));
        assert_eq!(
            cache.stats(),
            DedupStats {
                absorbed: 2,
                evictions: 0,
                expired: 1,
            }
        );
    }

    #[test]
    fn a_full_cache_evicts_the_oldest_id_and_its_repeat_gets_through() {
        let mut cache = DedupCache::new((), TTL, 2);
        let t0 = Instant::now();
        assert!(cache.check_and_insert("a", t0));
        assert!(cache.check_and_insert("b", t0));
        assert!(cache.check_and_insert("c", t0)); // evicts "a", inside its TTL
        assert_eq!(cache.len(), 2);
        assert!(!cache.check_and_insert("c", t0));
        assert!(!cache.check_and_insert("b", t0));
        assert!(cache.check_and_insert("a", t0)); // the window: it gets through
        assert_eq!(cache.stats().evictions, 2); // "a" evicted "b" in turn
        assert_eq!(cache.stats().expired, 0);
    }

    #[test]
    fn evictions_and_absorbed_repeats_are_counted_in_metrics() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let mut cache = DedupCache::new((), TTL, 1);
            let t0 = Instant::now();
            cache.check_and_insert("a", t0);
            cache.check_and_insert("b", t0);
            cache.check_and_insert("b", t0);
        });
        let counters: HashMap<String, u64> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| match value {
                DebugValue::Counter(n) => Some((key.key().name().to_string(), n)),
                _ => None,
            })
            .collect();
        assert_eq!(counters.get(DEDUP_EVICTIONS_METRIC), Some(&1));
        assert_eq!(counters.get(crate::sink::ABSORBED_METRIC), Some(&1));
    }

    #[tokio::test]
    async fn the_sink_passes_new_ids_once_including_repeats_inside_a_batch() {
        let mut sink = DedupCache::new(Vec::new(), TTL, 100);
        let batch = [
            Event::new("1", "x"),
            Event::new("2", "y"),
            Event::new("1", "x"),
        ];
        let w = sink.write(&batch).await.unwrap();
        assert_eq!((w.applied, w.absorbed), (2, 1));
        let w = sink.write(&batch[..2]).await.unwrap();
        assert_eq!((w.applied, w.absorbed), (0, 2));
        let ids: Vec<&str> = sink.inner().iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["1", "2"]);
    }

    /// Fails its first write.
    struct Flaky {
        failures: u32,
        applied: Vec<String>,
    }

    impl Sink for Flaky {
        type Item = String;

        fn write(
            &mut self,
            items: &[String],
        ) -> impl Future<Output = Result<Written, SinkError>> + Send {
            let result = if self.failures > 0 {
                self.failures -= 1;
                Err(SinkError::Client(crate::ClientError::InvalidArgument(
                    "down".into(),
                )))
            } else {
                self.applied.extend_from_slice(items);
                Ok(Written {
                    applied: items.len() as u64,
                    absorbed: 0,
                })
            };
            std::future::ready(result)
        }
    }

    #[tokio::test]
    async fn a_failed_write_remembers_nothing_so_its_retry_is_applied() {
        let inner = Flaky {
            failures: 1,
            applied: Vec::new(),
        };
        let mut sink = DedupCache::new(inner, TTL, 100);
        let batch = ["a".to_string(), "b".to_string()];
        assert!(sink.write(&batch).await.is_err());
        assert!(sink.is_empty());
        let w = sink.write(&batch).await.unwrap();
        assert_eq!((w.applied, w.absorbed), (2, 0));
        assert_eq!(sink.inner().applied, batch);
    }
}
