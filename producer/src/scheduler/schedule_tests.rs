//! Unit tests of the schedule file and of tick computation.

use super::*;

/// Milliseconds since the epoch of an RFC 3339 time.
fn ms(rfc3339: &str) -> u64 {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("valid test time")
        .timestamp_millis() as u64
}

fn one(toml: &str) -> Schedule {
    let mut schedules = parse(toml, "test.toml").expect("valid schedule file");
    assert_eq!(schedules.len(), 1);
    schedules.remove(0)
}

fn cron(pattern: &str, timezone: &str) -> Schedule {
    one(&format!(
        "[[schedule]]\nname = \"c\"\ntask = \"t\"\ncron = \"{pattern}\"\ntimezone = \"{timezone}\"\n"
    ))
}

fn error(toml: &str) -> String {
    parse(toml, "test.toml")
        .expect_err("the file is refused")
        .to_string()
}

/// The next `n` ticks after `from`, as RFC 3339 in UTC.
fn ticks(schedule: &Schedule, from: &str, n: usize) -> Vec<String> {
    let mut at = ms(from);
    (0..n)
        .map(|_| {
            at = schedule.next_after(at).expect("a next tick");
            tick_rfc3339(at)
        })
        .collect()
}

#[test]
fn a_full_schedule_is_read_with_its_defaults() {
    let s = one(r#"
        [[schedule]]
        name = "cleanup"
        task = "demo.sleep"
        every = "10s"
        payload = { ms = 10, tags = ["a", "b"], ratio = 0.5, at = 2025-01-01T00:00:00Z }
    "#);
    assert_eq!(s.queue, "default");
    assert_eq!(s.queue_type, QueueKind::Quorum);
    assert_eq!(s.missed, MissedPolicy::Skip);
    assert!(matches!(s.timing, Timing::Every(10_000)));
    assert_eq!(
        s.payload,
        serde_json::json!({"ms": 10, "tags": ["a", "b"], "ratio": 0.5, "at": "2025-01-01T00:00:00Z"})
    );
    let s = one(
        "[[schedule]]\nname = \"n\"\ntask = \"t\"\ncron = \"0 2 * * *\"\nmissed = \"run_once\"\n",
    );
    assert_eq!(s.missed, MissedPolicy::RunOnce);
    assert_eq!(s.payload, serde_json::Value::Null);
    assert!(matches!(
        s.timing,
        Timing::Cron {
            timezone: Tz::UTC,
            ..
        }
    ));
}

#[test]
fn interval_ticks_are_multiples_of_the_interval_since_the_epoch() {
    let s = one("[[schedule]]\nname = \"i\"\ntask = \"t\"\nevery = \"10s\"\n");
    assert_eq!(s.next_after(1_000_003_123), Some(1_000_010_000));
    assert_eq!(s.next_after(1_000_010_000), Some(1_000_020_000));
    assert_eq!(s.next_after(0), Some(10_000));
    // (after, until]: the tick at `after` is excluded, the one at `until` included.
    assert_eq!(
        s.ticks_between(1_000_000_000, 1_000_030_000),
        (3, Some(1_000_030_000))
    );
    assert_eq!(s.ticks_between(1_000_000_001, 1_000_009_999), (0, None));
    assert_eq!(s.ticks_between(5, 5), (0, None));
    let daily = one("[[schedule]]\nname = \"d\"\ntask = \"t\"\nevery = \"1day\"\n");
    assert_eq!(
        tick_rfc3339(daily.next_after(ms("2025-06-01T13:00:00Z")).unwrap()),
        "2025-06-02T00:00:00Z"
    );
}

#[test]
fn task_ids_name_the_schedule_and_the_tick() {
    let s = one("[[schedule]]\nname = \"cleanup\"\ntask = \"t\"\nevery = \"1500ms\"\n");
    assert_eq!(
        s.task_id(ms("2025-03-30T01:00:00Z")),
        "cleanup@2025-03-30T01:00:00Z"
    );
    assert_eq!(
        s.task_id(ms("2025-03-30T01:00:01.500Z")),
        "cleanup@2025-03-30T01:00:01.500Z"
    );
    let tick = ms("2025-03-30T01:00:01.500Z");
    assert_eq!(parse_task_id(&s.task_id(tick)), Some(("cleanup", tick)));
    assert_eq!(
        parse_task_id("a@b@2025-03-30T01:00:00Z"),
        Some(("a@b", ms("2025-03-30T01:00:00Z")))
    );
    assert_eq!(parse_task_id("0190a4c2-uuid"), None);
}

#[test]
fn cron_ticks_follow_the_time_zone() {
    let s = cron("0 9 * * 1-5", "Europe/Paris");
    // Friday 2025-06-06 09:00 CEST, then Monday.
    assert_eq!(
        ticks(&s, "2025-06-06T06:00:00Z", 2),
        ["2025-06-06T07:00:00Z", "2025-06-09T07:00:00Z"]
    );
    let utc = cron("*/15 * * * *", "UTC");
    assert_eq!(
        ticks(&utc, "2025-06-06T06:07:59.999Z", 2),
        ["2025-06-06T06:15:00Z", "2025-06-06T06:30:00Z"]
    );
    let named = cron("0 9 * * MON-FRI", "Europe/Paris");
    assert_eq!(
        ticks(&named, "2025-06-06T06:00:00Z", 2),
        ticks(&s, "2025-06-06T06:00:00Z", 2)
    );
    let last_day = cron("0 12 L * *", "UTC");
    assert_eq!(
        ticks(&last_day, "2025-02-01T00:00:00Z", 2),
        ["2025-02-28T12:00:00Z", "2025-03-31T12:00:00Z"]
    );
    // A six-field pattern has seconds.
    let seconds = cron("*/20 * * * * *", "UTC");
    assert_eq!(
        ticks(&seconds, "2025-06-06T06:00:00Z", 2),
        ["2025-06-06T06:00:20Z", "2025-06-06T06:00:40Z"]
    );
}

#[test]
fn cron_ticks_cross_daylight_saving_transitions() {
    // Paris springs forward on 2025-03-30: 02:00 CET becomes 03:00 CEST.
    let daily = cron("30 2 * * *", "Europe/Paris");
    assert_eq!(
        ticks(&daily, "2025-03-28T12:00:00Z", 3),
        [
            "2025-03-29T01:30:00Z", // 02:30 CET
            "2025-03-30T01:00:00Z", // 02:30 does not exist: first instant after the gap
            "2025-03-31T00:30:00Z", // 02:30 CEST
        ]
    );
    let hourly = cron("0 * * * *", "Europe/Paris");
    assert_eq!(
        ticks(&hourly, "2025-03-29T23:30:00Z", 3),
        [
            "2025-03-30T00:00:00Z", // 01:00 CET
            "2025-03-30T01:00:00Z", // 03:00 CEST: no 02:00 that night
            "2025-03-30T02:00:00Z", // 04:00 CEST
        ]
    );
    // Paris falls back on 2025-10-26: 03:00 CEST becomes 02:00 CET. A fixed time in the
    // repeated hour runs once.
    assert_eq!(
        ticks(&daily, "2025-10-25T12:00:00Z", 2),
        ["2025-10-26T00:30:00Z", "2025-10-27T01:30:00Z"]
    );
    let hourly_utc_span =
        hourly.ticks_between(ms("2025-10-25T22:00:00Z"), ms("2025-10-26T02:00:00Z"));
    // 01:00 CEST, 02:00 CEST, 02:00 CET, 03:00 CET: each real hour once.
    assert_eq!(hourly_utc_span, (4, Some(ms("2025-10-26T02:00:00Z"))));
}

#[test]
fn errors_name_the_schedule_and_the_field() {
    let cases = [
        (
            "[[schedule]]\nname = \"a\"\ntask = \"t\"\nevery = \"1s\"\ncron = \"* * * * *\"\n",
            "schedule `a`: `every`: give either `every` or `cron`, not both",
        ),
        (
            "[[schedule]]\nname = \"a\"\ntask = \"t\"\n",
            "schedule `a`: `every`: give `every`",
        ),
        (
            "[[schedule]]\nname = \"a\"\ntask = \"t\"\nevery = \"soon\"\n",
            "schedule `a`: `every`: `soon`",
        ),
        (
            "[[schedule]]\nname = \"a\"\ntask = \"t\"\nevery = \"100ms\"\n",
            "schedule `a`: `every`: `100ms`: must be at least 1s",
        ),
        (
            "[[schedule]]\nname = \"a\"\ntask = \"t\"\nevery = \"1s\"\ntimezone = \"UTC\"\n",
            "schedule `a`: `timezone`: applies to `cron` only",
        ),
        (
            "[[schedule]]\nname = \"a\"\ntask = \"t\"\ncron = \"61 * * * *\"\n",
            "schedule `a`: `cron`: `61 * * * *`",
        ),
        (
            "[[schedule]]\nname = \"a\"\ntask = \"t\"\ncron = \"0 0 30 2 *\"\n",
            "schedule `a`: `cron`: `0 0 30 2 *` never matches",
        ),
        (
            "[[schedule]]\nname = \"a\"\ntask = \"t\"\ncron = \"0 2 * * *\"\ntimezone = \"Mars/Olympus\"\n",
            "schedule `a`: `timezone`: `Mars/Olympus` is not an IANA time zone",
        ),
        (
            "[[schedule]]\nname = \"a\"\ntask = \"t\"\nevery = \"1s\"\nmissed = \"all\"\n",
            "schedule `a`: `missed`: `all` is not skip or run_once",
        ),
        (
            "[[schedule]]\nname = \"a\"\ntask = \"t\"\nevery = \"1s\"\nqueue = \"amq.x\"\n",
            "schedule `a`: `queue`:",
        ),
        (
            "[[schedule]]\nname = \"a\"\ntask = \"t\"\nevery = \"1s\"\npayload = nan\n",
            "schedule `a`: `payload`: NaN cannot be written in JSON",
        ),
        (
            "[[schedule]]\nname = \"a b\"\ntask = \"t\"\nevery = \"1s\"\n",
            "schedule `#1`: `name`: must be 1 to 100",
        ),
        (
            "[[schedule]]\nname = \"a\"\ntask = \"t\"\nevery = \"1s\"\n\
             [[schedule]]\nname = \"a\"\ntask = \"u\"\nevery = \"2s\"\n",
            "schedule `a`: `name`: is used by another schedule",
        ),
        ("", "test.toml: no [[schedule]] defined"),
    ];
    for (toml, expected) in cases {
        let message = error(toml);
        assert!(
            message.starts_with(expected),
            "{message:?} should start with {expected:?}"
        );
    }
}

#[test]
fn syntax_errors_and_unknown_fields_give_the_line() {
    let message = error("[[schedule]]\nname = \"a\"\ntask = \"t\"\nevry = \"1s\"\n");
    assert!(message.starts_with("test.toml:"), "{message}");
    assert!(
        message.contains("evry") && message.contains("line 4"),
        "{message}"
    );
    let message = error("[[schedule]]\nname = \"a\"\ntask = \"t\"\nevery = 10\n");
    assert!(message.contains("line 4"), "{message}");
}
