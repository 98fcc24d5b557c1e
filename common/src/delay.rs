//! Broker-held delays without plugins: a fixed binary cascade of TTL queues.
//!
//! Level `k` (0 ≤ k < [`DELAY_LEVELS`]) is a topic exchange and a queue that holds each message
//! 2^k seconds, then dead-letters it to level `k-1` (level 0 to the deliver exchange). A
//! message delayed `d` seconds carries the bits of `d` in its routing key,
//! `b27.b26.….b0.<queue>`: each level's exchange routes it into its queue when its bit is 1
//! and passes it down a level when it is 0. So the message waits exactly the sum of its set
//! bits' levels, every queue has one constant TTL (no head-of-line blocking), and the set of
//! queues is fixed whatever the delays. The deliver exchange routes `*.….*.<queue>` to the
//! work queue, which binds to it when declared.

use std::time::Duration;

/// Number of levels: delays up to 2^28 - 1 seconds (about 8.5 years).
pub const DELAY_LEVELS: u32 = 28;

/// Prefix of every exchange and queue of the cascade (`warren.delay.*`). Fixed: it cannot be
/// configured, so every party finds the same cascade.
pub const PREFIX: &str = "warren.delay";

/// The exchange a delayed message is published to (the top level).
pub fn delay_entry_exchange() -> String {
    level_name(DELAY_LEVELS - 1)
}

/// The exchange the last level dead-letters to; work queues bind to it.
pub fn delay_deliver_exchange() -> String {
    format!("{PREFIX}.deliver")
}

/// The exchange name of level `k` (and the name of its classic queue in versions before
/// the cascade moved to quorum queues).
pub fn level_name(level: u32) -> String {
    format!("{PREFIX}.{level:02}")
}

/// The quorum queue of level `k`, bound to the level's exchange.
pub fn level_queue_name(level: u32) -> String {
    format!("{PREFIX}.{level:02}.quorum")
}

/// The alternate exchange of the deliver exchange, and the queue it fills: tasks delayed for
/// a queue that does not exist (any more) end there.
pub const UNROUTABLE: &str = "warren.delay.unroutable";

/// Whether `exchange` is one of the cascade's (a delivery that came through the cascade has
/// the deliver exchange as its exchange, and a routing key that is not the task's own).
pub fn is_cascade_exchange(exchange: &str) -> bool {
    exchange
        .strip_prefix(PREFIX)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// Longest delay the cascade can hold.
pub fn max_delay() -> Duration {
    Duration::from_secs((1u64 << DELAY_LEVELS) - 1)
}

/// Whole seconds of a delay, rounded up (a task never runs early) and capped at
/// [`max_delay`].
pub fn delay_seconds(delay: Duration) -> u64 {
    let secs = delay
        .as_secs()
        .saturating_add(u64::from(delay.subsec_nanos() > 0));
    secs.min(max_delay().as_secs())
}

/// The routing key that makes the cascade deliver to `queue` after `delay`.
pub fn delay_routing_key(delay: Duration, queue: &str) -> String {
    let secs = delay_seconds(delay);
    let mut key = String::with_capacity(2 * DELAY_LEVELS as usize + queue.len());
    for level in (0..DELAY_LEVELS).rev() {
        key.push(if secs >> level & 1 == 1 { '1' } else { '0' });
        key.push('.');
    }
    key.push_str(queue);
    key
}

/// Binding pattern matching bit `level` equal to `bit` (the remaining words are the lower
/// bits and the queue name, matched by `#`).
pub(crate) fn level_pattern(level: u32, bit: char) -> String {
    let mut pattern = "*.".repeat((DELAY_LEVELS - 1 - level) as usize);
    pattern.push(bit);
    pattern.push_str(".#");
    pattern
}

/// Binding pattern of a work queue on the deliver exchange.
pub(crate) fn deliver_pattern(queue: &str) -> String {
    format!("{}{queue}", "*.".repeat(DELAY_LEVELS as usize))
}

/// TTL of level `k`'s queue in milliseconds.
pub(crate) fn level_ttl_ms(level: u32) -> u64 {
    (1u64 << level) * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Follows a routing key through the cascade as the broker would, summing the waits.
    fn simulate(key: &str) -> u64 {
        let bits: Vec<&str> = key.split('.').take(DELAY_LEVELS as usize).collect();
        (0..DELAY_LEVELS)
            .filter(|level| bits[(DELAY_LEVELS - 1 - level) as usize] == "1")
            .map(|level| level_ttl_ms(level) / 1000)
            .sum()
    }

    #[test]
    fn the_cascade_waits_exactly_the_delay() {
        for secs in [0u64, 1, 2, 3, 60, 61, 3600, 7200, 86_399, (1 << 28) - 1] {
            let key = delay_routing_key(Duration::from_secs(secs), "orders.eu");
            assert!(key.ends_with(".orders.eu"));
            assert_eq!(simulate(&key), secs, "{key}");
        }
    }

    #[test]
    fn delays_round_up_to_whole_seconds_and_cap() {
        assert_eq!(delay_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(delay_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(
            delay_seconds(Duration::from_secs(u64::MAX / 2)),
            (1 << 28) - 1
        );
        // The largest delays saturate rather than overflow the rounding up.
        assert_eq!(delay_seconds(Duration::MAX), (1 << 28) - 1);
        assert_eq!(delay_seconds(Duration::from_secs(u64::MAX)), (1 << 28) - 1);
        assert_eq!(
            delay_seconds(Duration::from_millis(u64::MAX)),
            (1 << 28) - 1
        );
        assert!(delay_routing_key(Duration::MAX, "q").starts_with(&"1.".repeat(28)));
    }

    #[test]
    fn every_name_is_under_the_prefix() {
        let names = [
            delay_entry_exchange(),
            delay_deliver_exchange(),
            level_name(0),
            level_queue_name(27),
            UNROUTABLE.to_owned(),
        ];
        for name in &names {
            assert!(is_cascade_exchange(name), "{name}");
        }
        assert_eq!(delay_entry_exchange(), "warren.delay.27");
        assert_eq!(delay_deliver_exchange(), "warren.delay.deliver");
        assert_eq!(level_queue_name(3), "warren.delay.03.quorum");
        assert_eq!(UNROUTABLE, format!("{PREFIX}.unroutable"));
        assert!(!is_cascade_exchange("warren"));
        assert!(!is_cascade_exchange(""));
        assert!(!is_cascade_exchange("warren.delayed"));
    }

    #[test]
    fn patterns_select_one_bit() {
        assert_eq!(level_pattern(DELAY_LEVELS - 1, '1'), "1.#");
        assert_eq!(level_pattern(0, '0'), format!("{}0.#", "*.".repeat(27)));
        assert_eq!(deliver_pattern("q"), format!("{}q", "*.".repeat(28)));
    }
}
