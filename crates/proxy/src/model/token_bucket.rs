//! The token bucket of `envoy.filters.http.local_ratelimit`
//! (`envoy.type.v3.TokenBucket`), lock-free and lazily refilled as Envoy's
//! atomic bucket has been since 1.31: the bucket starts full, tokens come
//! back at `tokens_per_fill` per `fill_interval` (one every
//! `fill_interval / tokens_per_fill`, on a fixed grid from the bucket's
//! creation), nothing runs between requests, and it never holds more than
//! `max_tokens`.
//!
//! Owns only the arithmetic: one `AtomicU64` is the whole state, so every
//! worker takes tokens from the same bucket with a compare-and-swap and no
//! lock. Configuration and the filter's decisions live in `super::http`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A shared token bucket.
///
/// State: `spent`, the tokens handed out plus the tokens a full bucket
/// could not hold. With `earned(t)` the tokens refilled by time `t`
/// (exact integer arithmetic), the bucket holds
/// `max_tokens + earned(t) - max(spent, earned(t))`, which is at most
/// `max_tokens`; taking a token sets `spent` to `max(spent, earned(t)) + 1`.
/// So by any time `t` at most `max_tokens + earned(t)` tokens have been
/// handed out, however many threads take them.
#[derive(Debug)]
pub struct TokenBucket {
    max_tokens: u64,
    tokens_per_fill: u64,
    /// Nanoseconds, never zero.
    fill_interval_ns: u128,
    origin: Instant,
    spent: AtomicU64,
}

impl TokenBucket {
    /// A full bucket. `tokens_per_fill` and `fill_interval` must be
    /// positive (the config compiler rejects zero, as Envoy's validation
    /// does); `max_tokens` 0 is a bucket that is always empty. Refill is
    /// capped at one token per nanosecond (a billion per second, beyond
    /// any proxy's request rate), so the count lasts over 500 years.
    pub fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> Self {
        let fill_interval_ns = fill_interval.as_nanos().max(1);
        TokenBucket {
            max_tokens: max_tokens.into(),
            tokens_per_fill: u64::from(tokens_per_fill)
                .clamp(1, u64::try_from(fill_interval_ns).unwrap_or(u64::MAX)),
            fill_interval_ns,
            origin: Instant::now(),
            spent: AtomicU64::new(0),
        }
    }

    /// Takes a token now; false when the bucket is empty.
    pub fn take(&self) -> bool {
        self.take_at(self.origin.elapsed())
    }

    /// Takes a token at `since_start` after the bucket was created.
    pub fn take_at(&self, since_start: Duration) -> bool {
        let earned = self.earned(since_start);
        let limit = self.max_tokens.saturating_add(earned);
        let mut spent = self.spent.load(Ordering::Relaxed);
        loop {
            // Tokens refilled while the bucket was full are lost.
            let floor = spent.max(earned);
            if floor >= limit {
                return false;
            }
            // Only this word is shared; no other memory is published
            // through it, so relaxed ordering is enough.
            match self.spent.compare_exchange_weak(
                spent,
                floor + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => spent = now,
            }
        }
    }

    /// Tokens in the bucket at `since_start` after its creation.
    pub fn available_at(&self, since_start: Duration) -> u64 {
        let earned = self.earned(since_start);
        let spent = self.spent.load(Ordering::Relaxed).max(earned);
        self.max_tokens.saturating_add(earned).saturating_sub(spent)
    }

    /// Tokens refilled from creation to `since_start` (saturating, which
    /// at the capped rate takes 584 years).
    fn earned(&self, since_start: Duration) -> u64 {
        // At most ~2^94 ns times 2^32 tokens: fits in u128.
        let n = since_start.as_nanos() * u128::from(self.tokens_per_fill) / self.fill_interval_ns;
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MS: Duration = Duration::from_millis(1);

    /// Takes up to `n` tokens at `at`; how many it got.
    fn drain_some(b: &TokenBucket, at: Duration, n: u64) -> u64 {
        (0..n).take_while(|_| b.take_at(at)).count() as u64
    }

    fn drain(b: &TokenBucket, at: Duration) -> u64 {
        let mut n = 0;
        while b.take_at(at) {
            n += 1;
            assert!(n <= 1_000_000, "bucket never ran dry");
        }
        n
    }

    #[test]
    fn starts_full_and_refills_tokens_per_fill_each_interval() {
        let b = TokenBucket::new(10, 5, Duration::from_secs(1));
        assert_eq!(b.available_at(Duration::ZERO), 10);
        assert_eq!(drain(&b, Duration::ZERO), 10);
        // 5 per second is one token every 200 ms, on a fixed grid.
        assert!(!b.take_at(199 * MS));
        assert_eq!(b.available_at(200 * MS), 1);
        assert!(b.take_at(200 * MS));
        assert!(!b.take_at(399 * MS));
        // By 1 s, 5 tokens were refilled and one of them is taken.
        assert_eq!(b.available_at(Duration::from_secs(1)), 4);
        assert_eq!(drain(&b, Duration::from_secs(1)), 4);
        assert_eq!(drain(&b, Duration::from_secs(2)), 5);
    }

    #[test]
    fn never_holds_more_than_max_tokens() {
        let b = TokenBucket::new(3, 2, Duration::from_millis(100));
        assert_eq!(drain(&b, Duration::ZERO), 3);
        // A long idle period refills only up to max_tokens...
        let later = Duration::from_secs(3600);
        assert_eq!(b.available_at(later), 3);
        assert_eq!(drain(&b, later), 3);
        // ...and what was refilled beyond it is not banked for later.
        assert_eq!(b.available_at(later + 49 * MS), 0);
        assert_eq!(drain(&b, later + 50 * MS), 1);
        assert_eq!(drain(&b, later + 100 * MS), 1);
        assert_eq!(drain(&b, later + 10 * Duration::from_secs(1)), 3);
    }

    #[test]
    fn tokens_taken_while_partly_full_keep_their_refill_schedule() {
        let b = TokenBucket::new(4, 1, Duration::from_secs(1));
        assert!(b.take_at(Duration::ZERO));
        assert!(b.take_at(Duration::ZERO));
        // Refill continues from creation, not from the last take.
        assert_eq!(b.available_at(Duration::from_millis(999)), 2);
        assert_eq!(b.available_at(Duration::from_secs(1)), 3);
        assert_eq!(b.available_at(Duration::from_secs(2)), 4);
        assert_eq!(b.available_at(Duration::from_secs(9)), 4);
    }

    #[test]
    fn uneven_rates_are_exact() {
        // 3 tokens per second: the grid is 333_333_333.3 ns; no drift.
        let b = TokenBucket::new(1, 3, Duration::from_secs(1));
        assert!(b.take_at(Duration::ZERO));
        assert!(!b.take_at(Duration::from_nanos(333_333_333)));
        assert!(b.take_at(Duration::from_nanos(333_333_334)));
        assert!(!b.take_at(Duration::from_nanos(666_666_666)));
        assert!(b.take_at(Duration::from_nanos(666_666_667)));
        assert!(!b.take_at(Duration::from_nanos(999_999_999)));
        assert!(b.take_at(Duration::from_secs(1)));
        // After a day of steady use, exactly 3 per second were refilled.
        let day = Duration::from_secs(86_400);
        let b = TokenBucket::new(1_000_000, 3, Duration::from_secs(1));
        assert_eq!(drain(&b, Duration::ZERO), 1_000_000);
        assert_eq!(drain(&b, day), 259_200);
    }

    #[test]
    fn zero_max_tokens_always_rejects() {
        let b = TokenBucket::new(0, 1, Duration::from_millis(1));
        assert!(!b.take_at(Duration::ZERO));
        assert!(!b.take_at(Duration::from_secs(10)));
    }

    #[test]
    fn extreme_rates_are_capped_and_times_do_not_overflow() {
        // 2^32 tokens per nanosecond is capped at one per nanosecond, so
        // five centuries in, the bucket still refills.
        let b = TokenBucket::new(u32::MAX, u32::MAX, Duration::from_nanos(1));
        let centuries = Duration::from_secs(500 * 365 * 86_400);
        assert_eq!(drain_some(&b, Duration::ZERO, 10), 10);
        assert_eq!(b.available_at(centuries), u64::from(u32::MAX));
        assert!(b.take_at(centuries));
        assert_eq!(b.available_at(centuries), u64::from(u32::MAX) - 1);
        // The largest Duration saturates the count (the bucket then reads
        // empty) instead of overflowing.
        let far = Duration::MAX;
        assert_eq!(b.earned(far), u64::MAX);
        assert!(!b.take_at(far));
        // A long interval with a big fill is exact too.
        let b = TokenBucket::new(1, u32::MAX, Duration::from_secs(u64::MAX / 2));
        assert!(b.take_at(Duration::ZERO));
        assert!(!b.take_at(Duration::from_secs(1)));
    }

    #[test]
    fn concurrent_takers_get_exactly_max_tokens_without_refill() {
        let b = Arc::new(TokenBucket::new(1000, 1, Duration::from_secs(3600)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..5000).filter(|_| b.take()).count())
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().expect("taker")).sum();
        assert_eq!(granted, 1000);
    }

    #[test]
    fn concurrent_takers_never_exceed_max_plus_refill() {
        // 100 tokens per 10 ms; four threads take as fast as they can.
        let b = Arc::new(TokenBucket::new(50, 100, Duration::from_millis(10)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..200_000).filter(|_| b.take()).count() as u64)
            })
            .collect();
        let granted: u64 = threads.into_iter().map(|t| t.join().expect("taker")).sum();
        // Every grant happened before this instant, so this bound holds.
        let allowed = 50 + b.earned(b.origin.elapsed());
        assert!(
            granted <= allowed,
            "{granted} tokens handed out, at most {allowed} allowed"
        );
        assert!(granted >= 50, "the initial bucket was handed out");
    }

    #[test]
    fn concurrent_takers_at_fixed_instants_share_each_refill_exactly() {
        // Deterministic time: every thread takes at the same instants, so
        // exactly max + earned tokens must be handed out in total.
        let b = Arc::new(TokenBucket::new(8, 4, Duration::from_millis(40)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    for step in 0..=100u32 {
                        let at = step * MS;
                        while b.take_at(at) {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        let granted: u64 = threads.into_iter().map(|t| t.join().expect("taker")).sum();
        // 8 at the start plus 4 per 40 ms up to 100 ms (one every 10 ms).
        assert_eq!(granted, 8 + 10);
    }
}
