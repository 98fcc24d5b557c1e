//! The scheduler's schedule file (TOML): any text is either schedules or an error, and each
//! schedule's ticks can be computed, named and read back from their task ids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_producer::scheduler::{parse_task_id, schedule};

/// 2026-12-01T09:00:00Z.
const NOW_MS: u64 = 1_796_115_600_000;

fuzz_target!(|text: &str| {
    let Ok(schedules) = schedule::parse(text, "fuzz.toml") else {
        return;
    };
    for s in &schedules {
        for t in [0, NOW_MS, u64::MAX / 2, u64::MAX] {
            if let Some(tick) = s.next_after(t) {
                assert!(tick > t);
            }
        }
        // Ten minutes of ticks: a cron schedule is stepped through tick by tick.
        let (count, latest) = s.ticks_between(NOW_MS, NOW_MS + 600_000);
        assert_eq!(count == 0, latest.is_none());
        if let Some(tick) = latest {
            assert!(tick > NOW_MS && tick <= NOW_MS + 600_000);
            let id = s.task_id(tick);
            assert_eq!(parse_task_id(&id), Some((s.name.as_str(), tick)), "{id}");
        }
    }
});
