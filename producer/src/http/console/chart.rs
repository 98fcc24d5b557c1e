//! The overview's chart: tasks per second that succeeded and that failed (retried,
//! dead-lettered or expired), every queue together, in the index's 10-second buckets over the
//! last minutes. An SVG drawn on the server with attributes only (the content security policy
//! allows no inline style), so it needs no script and no library.

use super::format::count;
use crate::status::throughput::{Bucket, BUCKET_MS};
use maud::{html, Markup};

const WIDTH: u64 = 720;
const HEIGHT: u64 = 140;
/// Room for the labels under the bars.
const BOTTOM: u64 = 16;

/// The chart of `buckets` over the `span_ms` before `now_ms`.
pub(crate) fn chart(buckets: &[Bucket], now_ms: u64, span_ms: u64) -> Markup {
    let slots = (span_ms / BUCKET_MS).max(1);
    let first = (now_ms.saturating_sub(span_ms) / BUCKET_MS) * BUCKET_MS + BUCKET_MS;
    // Per slot: succeeded, failed.
    let mut totals = vec![(0u64, 0u64); slots as usize];
    for bucket in buckets {
        let Some(slot) = bucket.start_ms.checked_sub(first).map(|d| d / BUCKET_MS) else {
            continue;
        };
        if let Some(total) = totals.get_mut(slot as usize) {
            total.0 += bucket.succeeded;
            total.1 += bucket.retried + bucket.dead_lettered + bucket.expired;
        }
    }
    let peak = totals.iter().map(|(s, f)| s + f).max().unwrap_or(0).max(1);
    let plot = HEIGHT - BOTTOM;
    let bar = WIDTH / slots;
    let per_second = |n: u64| n as f64 / (BUCKET_MS as f64 / 1000.0);
    let succeeded: u64 = totals.iter().map(|t| t.0).sum();
    let failed: u64 = totals.iter().map(|t| t.1).sum();
    html! {
        p.legend {
            span { span.sw.succeeded {} "succeeded (" (count(succeeded)) ")" }
            span { span.sw.failed {} "failed: retried, dead-lettered or expired (" (count(failed)) ")" }
            span.muted { "peak " (format!("{:.1}", per_second(peak))) " tasks/s" }
        }
        svg.chart #throughput width=(WIDTH) height=(HEIGHT) viewBox={ "0 0 " (WIDTH) " " (HEIGHT) }
            role="img" aria-label="Tasks per second, succeeded and failed, over the last minutes" {
            @for (i, (ok, bad)) in totals.iter().enumerate() {
                @let x = i as u64 * bar;
                @let ok_h = ok * plot / peak;
                @let bad_h = bad * plot / peak;
                @if *ok > 0 {
                    rect.succeeded x=(x) y=(plot - ok_h) width=(bar.saturating_sub(1)) height=(ok_h.max(1)) {
                        title { (format!("{:.1}", per_second(*ok))) " succeeded/s" }
                    }
                }
                @if *bad > 0 {
                    rect.failed x=(x) y=(plot - ok_h - bad_h.max(1)) width=(bar.saturating_sub(1)) height=(bad_h.max(1)) {
                        title { (format!("{:.1}", per_second(*bad))) " failed/s" }
                    }
                }
            }
            text x="0" y=(HEIGHT - 3) { (span_ms / 60_000) " min ago" }
            text x=(WIDTH - 30) y=(HEIGHT - 3) { "now" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(start_ms: u64, succeeded: u64, dead_lettered: u64) -> Bucket {
        Bucket {
            start_ms,
            queue: "q".into(),
            succeeded,
            dead_lettered,
            ..Bucket::default()
        }
    }

    #[test]
    fn the_chart_sums_queues_per_bucket_and_scales_to_the_peak() {
        let now = 1_000_000;
        let buckets = [
            bucket(990_000, 50, 0),
            bucket(990_000, 50, 10),
            bucket(100, 9, 9),
        ];
        let svg = chart(&buckets, now, 600_000).into_string();
        assert!(svg.contains("succeeded (100)"), "{svg}");
        assert!(
            svg.contains("(10)"),
            "the bucket older than the span is left out: {svg}"
        );
        assert!(svg.contains("peak 11.0 tasks/s"), "{svg}");
        assert!(svg.contains("10.0 succeeded/s"), "{svg}");
        assert!(!svg.contains("style="));
    }
}
