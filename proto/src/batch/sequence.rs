//! Producer sequence numbers: non-negative `i32`s that wrap to 0 after
//! `i32::MAX`, as Kafka's do, and the window of batches a producer may
//! have in flight per partition.

/// Most batches a producer may have in flight per partition, and so the
/// number of recent batches the broker remembers per producer to answer
/// retries (its duplicate window). Client and broker must agree on it.
pub const WINDOW: usize = 5;

/// The sequence number after `seq`, wrapping to 0 after `i32::MAX`.
pub fn next(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

/// `seq` moved on by `delta`, wrapping past `i32::MAX` back to 0: the
/// sequence of the record `delta` records after the one numbered `seq`.
pub fn advance(seq: i32, delta: i32) -> i32 {
    seq.wrapping_add(delta) & i32::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_wraps_to_zero_after_the_largest_sequence() {
        assert_eq!(next(0), 1);
        assert_eq!(next(i32::MAX - 1), i32::MAX);
        assert_eq!(next(i32::MAX), 0);
    }

    #[test]
    fn advance_wraps_past_the_largest_sequence_and_agrees_with_next() {
        assert_eq!(advance(10, 4), 14);
        assert_eq!(advance(i32::MAX, 0), i32::MAX);
        assert_eq!(advance(i32::MAX, 1), 0);
        assert_eq!(advance(i32::MAX - 1, 3), 1);
        assert_eq!(advance(i32::MAX - 4, i32::MAX), i32::MAX - 5);
        for seq in [0, 1, 1000, i32::MAX - 1, i32::MAX] {
            assert_eq!(advance(seq, 1), next(seq), "{seq}");
        }
    }

    #[test]
    fn the_window_is_five_batches() {
        assert_eq!(WINDOW, 5);
    }
}
