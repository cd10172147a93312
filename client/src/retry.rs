//! Retrying: the exponential [`Backoff`] and [`retry_until`], which runs an
//! async operation again until it succeeds, fails with an error that is not
//! worth retrying, or a deadline passes.
//!
//! The producer spaces batch retries and reconnects with a [`Backoff`]; it
//! and the transactional producer fetch metadata and call the transaction
//! RPCs through [`retry_until`]. Test harnesses use the same helper to wait
//! for a broker that is restarting.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::ClientError;

/// Doublings after which the backoff stops growing (before the cap).
const MAX_DOUBLINGS: u32 = 16;

/// An exponential backoff: `initial`, doubled per attempt, at most `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `initial` and doubles per attempt up to `max` (raised to
    /// `initial` if smaller).
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
        }
    }

    /// The same pause before every attempt.
    pub fn fixed(pause: Duration) -> Backoff {
        Backoff::new(pause, pause)
    }

    /// The pause before retry number `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(MAX_DOUBLINGS);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Runs `op` until it succeeds, fails with an error for which `retriable`
/// is false, or fails after `deadline`; returns that last outcome.
///
/// Retry number `n` waits [`Backoff::delay`]`(n)` first. The deadline is
/// checked after each failure, so an attempt that starts just before it
/// runs to its end; bound single attempts with [`timed`]. `what` names the
/// operation in the debug log of each retry.
///
/// Pass [`ClientError::is_retriable`] as `retriable` to retry only what is
/// safe to retry.
pub async fn retry_until<T, F, Fut, R>(
    what: &'static str,
    deadline: Instant,
    backoff: Backoff,
    retriable: R,
    mut op: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
    R: Fn(&ClientError) -> bool,
{
    let mut attempt = 0u32;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if retriable(&e) && Instant::now() < deadline => {
                tracing::debug!(error = %e, attempt, "{what} failed; retrying");
                tokio::time::sleep(backoff.delay(attempt)).await;
                attempt = attempt.saturating_add(1);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs `fut`, failing with [`ClientError::Timeout`] for `what` if it takes
/// longer than `limit`.
pub async fn timed<T, Fut>(what: &'static str, limit: Duration, fut: Fut) -> Result<T, ClientError>
where
    Fut: Future<Output = Result<T, ClientError>>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout {
            what,
            after_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use ferry_proto::ErrorCode;

    use super::*;

    #[test]
    fn the_backoff_doubles_per_attempt_up_to_its_cap() {
        let b = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        assert_eq!(b.delay(0), Duration::from_millis(50));
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
        let raised = Backoff::new(Duration::from_millis(80), Duration::from_millis(10));
        assert_eq!(raised.delay(3), Duration::from_millis(80), "max >= initial");
        let fixed = Backoff::fixed(Duration::from_millis(50));
        assert_eq!(fixed.delay(0), fixed.delay(30));
    }

    #[tokio::test(start_paused = true)]
    async fn retrying_waits_the_backoff_between_attempts_until_success() {
        let calls = Cell::new(0u32);
        let started = Instant::now();
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(25));
        let r = retry_until(
            "op",
            started + Duration::from_secs(5),
            backoff,
            ClientError::is_retriable,
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n < 4 {
                        Err(ClientError::broker(ErrorCode::NetworkError, "lost"))
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(r.unwrap(), 4);
        // 10 + 20 + 25 (capped) ms of backoff, on paused time.
        assert_eq!(started.elapsed(), Duration::from_millis(55));
    }

    #[tokio::test(start_paused = true)]
    async fn retrying_stops_once_the_deadline_has_passed() {
        let calls = Cell::new(0u32);
        let started = Instant::now();
        let r: Result<(), _> = retry_until(
            "op",
            started + Duration::from_millis(100),
            Backoff::fixed(Duration::from_millis(30)),
            ClientError::is_retriable,
            || {
                calls.set(calls.get() + 1);
                async { Err(ClientError::broker(ErrorCode::RequestTimedOut, "slow")) }
            },
        )
        .await;
        assert_eq!(r.unwrap_err().code(), ErrorCode::RequestTimedOut);
        // Failures at 0, 30, 60, 90 are retried; the one at 120 is past it.
        assert_eq!(calls.get(), 5);
        assert_eq!(started.elapsed(), Duration::from_millis(120));
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_that_is_not_retriable_is_returned_at_once() {
        let calls = Cell::new(0u32);
        let started = Instant::now();
        let r: Result<(), _> = retry_until(
            "op",
            started + Duration::from_secs(60),
            Backoff::fixed(Duration::from_millis(30)),
            ClientError::is_retriable,
            || {
                calls.set(calls.get() + 1);
                async { Err(ClientError::broker(ErrorCode::ProducerFenced, "old")) }
            },
        )
        .await;
        assert_eq!(r.unwrap_err().code(), ErrorCode::ProducerFenced);
        assert_eq!(calls.get(), 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_caller_decides_what_is_retriable() {
        let calls = Cell::new(0u32);
        let r: Result<(), _> = retry_until(
            "op",
            Instant::now() + Duration::from_secs(1),
            Backoff::fixed(Duration::from_millis(50)),
            |e| e.code() != ErrorCode::ProducerFenced,
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    match n {
                        1 => Err(ClientError::InvalidArgument("not yet".into())),
                        _ => Err(ClientError::broker(ErrorCode::ProducerFenced, "old")),
                    }
                }
            },
        )
        .await;
        assert_eq!(r.unwrap_err().code(), ErrorCode::ProducerFenced);
        assert_eq!(calls.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_attempt_fails_with_a_timeout_naming_it() {
        let r: Result<(), _> = timed("EndTxn", Duration::from_secs(30), async {
            tokio::time::sleep(Duration::from_secs(31)).await;
            Ok(())
        })
        .await;
        assert!(
            matches!(
                r,
                Err(ClientError::Timeout {
                    what: "EndTxn",
                    after_ms: 30_000
                })
            ),
            "{r:?}"
        );
        assert_eq!(
            timed("x", Duration::from_secs(1), async { Ok(3) })
                .await
                .unwrap(),
            3
        );
    }
}
