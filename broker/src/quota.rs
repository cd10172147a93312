//! Quotas: how many bytes per second a principal may produce and fetch.
//!
//! A quota never refuses or drops a request. The request is served, its
//! bytes are charged to the principal's bucket, and when the bucket is in
//! debt the front end throttles the client for the time the debt takes to
//! pay off at the quota's rate: the Kafka front end reports that time in
//! `throttle_time_ms` and stops reading the connection's next request
//! until it has passed (Kafka's own behaviour since KIP-219); the gRPC
//! front end delays a unary response, or stops reading a produce stream,
//! for that long and reports it in `throttle_time_ms` too.
//!
//! The bucket holds at most [`QUOTA_BURST`] of credit, so an idle client
//! may send that much at once before it is throttled, and over any long
//! run its rate converges on the quota. Every principal has its own
//! bucket; callers without a principal (no authentication) share the one
//! of [`ANONYMOUS`], as they do in Kafka.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::auth::acl::Caller;

/// The longest a single request is throttled for. A debt larger than this
/// (one batch far over the quota) is paid off over several requests.
pub const MAX_THROTTLE: Duration = Duration::from_secs(10);

/// How much unused credit a bucket keeps, in seconds of its rate.
pub const QUOTA_BURST: Duration = Duration::from_millis(500);

/// The most principals the config may give their own quota.
pub const MAX_QUOTA_USERS: usize = 10_000;

/// The smallest rate a quota may set, in bytes per second.
pub const MIN_BYTE_RATE: u64 = 1024;

/// The name under which callers without a principal share a quota.
pub const ANONYMOUS: &str = "ANONYMOUS";

/// Which way the bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Record batches produced to the broker (`producer_byte_rate`).
    Produce,
    /// Record batches fetched from the broker (`consumer_byte_rate`).
    Fetch,
}

impl Direction {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Produce => "produce",
            Direction::Fetch => "fetch",
        }
    }
}

/// One principal's rates, in bytes per second; `None` is unlimited.
/// The names are Kafka's quota keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByteRates {
    pub producer_byte_rate: Option<u64>,
    pub consumer_byte_rate: Option<u64>,
}

impl ByteRates {
    fn rate(&self, d: Direction) -> Option<u64> {
        match d {
            Direction::Produce => self.producer_byte_rate,
            Direction::Fetch => self.consumer_byte_rate,
        }
    }

    fn is_unlimited(&self) -> bool {
        self.producer_byte_rate.is_none() && self.consumer_byte_rate.is_none()
    }

    /// Sets the rate a `KEY=VALUE` pair names.
    fn set(&mut self, key: &str, value: u64) -> Result<(), String> {
        match key {
            "producer_byte_rate" => self.producer_byte_rate = Some(value),
            "consumer_byte_rate" => self.consumer_byte_rate = Some(value),
            other => {
                return Err(format!(
                    "unknown quota {other:?} (expected producer_byte_rate or consumer_byte_rate)"
                ));
            }
        }
        Ok(())
    }
}

/// The quotas of a broker: a default for every principal, and principals
/// of their own. Config file:
///
/// ```toml
/// [quotas.default]
/// producer_byte_rate = 10485760
/// [quotas.users.batch-loader]
/// producer_byte_rate = 1048576
/// consumer_byte_rate = 1048576
/// ```
///
/// A principal's own entry replaces the default key by key: a key it does
/// not set falls back to the default's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    #[serde(default)]
    pub default: ByteRates,
    #[serde(default)]
    pub users: BTreeMap<String, ByteRates>,
}

impl QuotaConfig {
    /// Whether no quota is set at all.
    pub fn is_unlimited(&self) -> bool {
        self.default.is_unlimited() && self.users.values().all(ByteRates::is_unlimited)
    }

    /// The rate that applies to `user` (a principal's name, or
    /// [`ANONYMOUS`]).
    pub fn rate(&self, user: &str, d: Direction) -> Option<u64> {
        self.users
            .get(user)
            .and_then(|r| r.rate(d))
            .or_else(|| self.default.rate(d))
    }

    /// Adds one `--quota USER:KEY=RATE` setting; `USER` `*` is the
    /// default.
    pub fn add_spec(&mut self, spec: &str) -> Result<(), String> {
        let bad = || {
            format!(
                "--quota {spec:?}: expected USER:KEY=BYTES_PER_SEC, \
                 e.g. app:producer_byte_rate=1048576 (USER * is every principal)"
            )
        };
        let (user, setting) = spec.rsplit_once(':').ok_or_else(bad)?;
        let (key, value) = setting.split_once('=').ok_or_else(bad)?;
        let value: u64 = value.trim().parse().map_err(|_| bad())?;
        let user = user.trim();
        if user.is_empty() {
            return Err(bad());
        }
        let rates = if user == "*" {
            &mut self.default
        } else {
            self.users
                .entry(principal_name(user).to_string())
                .or_default()
        };
        rates
            .set(key.trim(), value)
            .map_err(|e| format!("--quota {spec:?}: {e}"))
    }

    /// The same quotas with every principal named without its `User:`
    /// prefix, as principals are matched.
    pub fn normalized(self) -> QuotaConfig {
        QuotaConfig {
            default: self.default,
            users: self
                .users
                .into_iter()
                .map(|(u, r)| (principal_name(&u).to_string(), r))
                .collect(),
        }
    }

    /// Checks the limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.users.len() > MAX_QUOTA_USERS {
            return Err(format!(
                "{} principals have quotas (limit {MAX_QUOTA_USERS})",
                self.users.len()
            ));
        }
        let all = std::iter::once(("*", &self.default))
            .chain(self.users.iter().map(|(u, r)| (u.as_str(), r)));
        for (user, rates) in all {
            for d in [Direction::Produce, Direction::Fetch] {
                if let Some(r) = rates.rate(d)
                    && r < MIN_BYTE_RATE
                {
                    return Err(format!(
                        "quota for {user}: {} byte rate {r} is under the minimum of {MIN_BYTE_RATE} bytes/s",
                        d.name()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A principal's name as quotas match it: `User:app` and `app` are one.
fn principal_name(user: &str) -> &str {
    user.strip_prefix("User:").unwrap_or(user)
}

/// Credit of one principal in one direction.
#[derive(Debug)]
struct Bucket {
    /// Bytes that may still pass before a throttle; negative is debt.
    credit: f64,
    refilled: Instant,
}

/// The buckets in force; cheap when no quota is set.
#[derive(Debug)]
pub struct Quotas {
    config: QuotaConfig,
    buckets: parking_lot::Mutex<HashMap<(String, Direction), Bucket>>,
}

impl Quotas {
    pub fn new(config: QuotaConfig) -> Quotas {
        Quotas {
            config,
            buckets: parking_lot::Mutex::default(),
        }
    }

    /// The quotas' settings.
    pub fn config(&self) -> &QuotaConfig {
        &self.config
    }

    /// Charges `bytes` to the caller and returns how long to throttle it
    /// for (zero while it is within its quota).
    pub fn charge(&self, caller: &Caller, d: Direction, bytes: usize) -> Duration {
        self.charge_at(caller, d, bytes, Instant::now())
    }

    fn charge_at(&self, caller: &Caller, d: Direction, bytes: usize, now: Instant) -> Duration {
        if bytes == 0 || self.config.is_unlimited() {
            return Duration::ZERO;
        }
        let user = caller
            .principal
            .as_ref()
            .map_or(ANONYMOUS, |p| p.0.as_str());
        let Some(rate) = self.config.rate(user, d) else {
            return Duration::ZERO;
        };
        let rate = rate as f64;
        let burst = rate * QUOTA_BURST.as_secs_f64();
        let throttle = {
            let mut buckets = self.buckets.lock();
            let b = buckets
                .entry((user.to_string(), d))
                .or_insert_with(|| Bucket {
                    credit: burst,
                    refilled: now,
                });
            let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
            b.credit = (b.credit + elapsed * rate).min(burst) - bytes as f64;
            b.refilled = now;
            if b.credit >= 0.0 {
                return Duration::ZERO;
            }
            Duration::from_secs_f64(-b.credit / rate).min(MAX_THROTTLE)
        };
        metrics::counter!("ferry_quota_throttled_total", "direction" => d.name()).increment(1);
        metrics::counter!("ferry_quota_throttle_milliseconds_total", "direction" => d.name())
            .increment(throttle.as_millis() as u64);
        throttle
    }
}

/// A throttle in whole milliseconds, as the responses carry it.
pub fn millis(throttle: Duration) -> u32 {
    u32::try_from(throttle.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Principal;

    fn user(name: &str) -> Caller {
        Caller {
            principal: Some(Principal(name.into())),
            host: None,
        }
    }

    fn quotas(specs: &[&str]) -> Quotas {
        let mut c = QuotaConfig::default();
        for s in specs {
            c.add_spec(s).unwrap();
        }
        c.validate().unwrap();
        Quotas::new(c)
    }

    #[test]
    fn a_client_within_its_quota_is_never_throttled() {
        let q = quotas(&["app:producer_byte_rate=10000"]);
        let t0 = Instant::now();
        // 1,000 bytes every 100 ms is exactly the rate.
        for i in 0..100 {
            let now = t0 + Duration::from_millis(100 * i);
            assert_eq!(
                q.charge_at(&user("app"), Direction::Produce, 1000, now),
                Duration::ZERO,
                "request {i}"
            );
        }
    }

    #[test]
    fn debt_is_throttled_for_the_time_it_takes_to_pay_off() {
        let q = quotas(&["app:producer_byte_rate=10000"]);
        let t0 = Instant::now();
        // The burst (5,000 bytes) passes, the next 10,000 are one second
        // of debt.
        assert_eq!(
            q.charge_at(&user("app"), Direction::Produce, 5000, t0),
            Duration::ZERO
        );
        let t = q.charge_at(&user("app"), Direction::Produce, 10_000, t0);
        assert_eq!(t.as_millis(), 1000);
        // Half of it paid off after 500 ms; a further 1,000 bytes add 100 ms.
        let t = q.charge_at(
            &user("app"),
            Direction::Produce,
            1000,
            t0 + Duration::from_millis(500),
        );
        assert!(
            t.abs_diff(Duration::from_millis(600)) < Duration::from_micros(1),
            "{t:?}"
        );
        // A single huge request is throttled at most MAX_THROTTLE.
        let t = q.charge_at(
            &user("app"),
            Direction::Produce,
            1 << 30,
            t0 + Duration::from_secs(2),
        );
        assert_eq!(t, MAX_THROTTLE);
    }

    #[test]
    fn a_client_that_waits_out_each_throttle_moves_the_quota_rate() {
        let rate = 100_000u64;
        let q = quotas(&[&format!("app:producer_byte_rate={rate}")]);
        let t0 = Instant::now();
        let mut now = t0;
        let mut sent = 0u64;
        // A greedy client: 16 KiB requests, each sent as soon as the
        // previous throttle has passed, for 10 s.
        while now < t0 + Duration::from_secs(10) {
            sent += 16 * 1024;
            now += q.charge_at(&user("app"), Direction::Produce, 16 * 1024, now);
        }
        let observed = sent as f64 / now.duration_since(t0).as_secs_f64();
        let ratio = observed / rate as f64;
        assert!((1.0..=1.1).contains(&ratio), "{observed} bytes/s: {ratio}");
    }

    #[test]
    fn principals_and_directions_have_their_own_buckets() {
        let q = quotas(&[
            "*:producer_byte_rate=10000",
            "fast:producer_byte_rate=1000000",
        ]);
        let t0 = Instant::now();
        let slow = q.charge_at(&user("slow"), Direction::Produce, 20_000, t0);
        assert!(slow > Duration::ZERO);
        // Another principal, another direction, and the unlimited fetch
        // quota are untouched by the slow producer's debt.
        assert_eq!(
            q.charge_at(&user("fast"), Direction::Produce, 20_000, t0),
            Duration::ZERO
        );
        assert_eq!(
            q.charge_at(&user("slow"), Direction::Fetch, 1 << 20, t0),
            Duration::ZERO
        );
        assert!(q.charge_at(&user("other"), Direction::Produce, 20_000, t0) > Duration::ZERO);
        // Callers without a principal share the ANONYMOUS bucket.
        let anon = Caller::default();
        assert!(q.charge_at(&anon, Direction::Produce, 20_000, t0) > Duration::ZERO);
        assert!(q.charge_at(&anon, Direction::Produce, 1, t0) > Duration::ZERO);
    }

    #[test]
    fn bad_specs_and_rates_are_refused_with_the_reason() {
        let mut c = QuotaConfig::default();
        for bad in [
            "app",
            "app:producer_byte_rate",
            ":producer_byte_rate=5000",
            "app:producer_byte_rate=fast",
            "app:request_percentage=50",
        ] {
            assert!(c.add_spec(bad).is_err(), "{bad}");
        }
        c.add_spec("app:consumer_byte_rate=10").unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.contains("under the minimum"), "{e}");
        // A user's own key replaces the default's; others fall back.
        let mut c = QuotaConfig::default();
        c.add_spec("*:producer_byte_rate=5000").unwrap();
        c.add_spec("*:consumer_byte_rate=6000").unwrap();
        c.add_spec("User:CN=a:b:producer_byte_rate=7000").unwrap();
        assert_eq!(c.rate("CN=a:b", Direction::Produce), Some(7000));
        assert_eq!(c.rate("CN=a:b", Direction::Fetch), Some(6000));
        assert_eq!(c.rate("other", Direction::Produce), Some(5000));
    }
}
