//! The results: rows comparing Warren with the baseline (medians, spreads, ratios, targets),
//! rendered as a markdown table and written as JSON.

use crate::stats::Summary;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// What a row must achieve.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Warren/baseline of the medians at least this.
    RatioAtLeast(f64),
    /// Warren/baseline of the medians at most this.
    RatioAtMost(f64),
    /// Warren's median at most this (in the row's unit).
    WarrenAtMost(f64),
    /// Warren's median at least this (in the row's unit).
    WarrenAtLeast(f64),
}

impl Target {
    fn describe(self) -> String {
        match self {
            Target::RatioAtLeast(r) => format!("ratio ≥ {r:.2}"),
            Target::RatioAtMost(r) => format!("ratio ≤ {r:.2}"),
            Target::WarrenAtMost(v) => format!("Warren ≤ {v}"),
            Target::WarrenAtLeast(v) => format!("Warren ≥ {v}"),
        }
    }
}

/// One figure for both sides.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// What was measured.
    pub metric: String,
    /// Its unit.
    pub unit: String,
    /// Warren's repetitions.
    pub warren: Option<Summary>,
    /// The baseline's repetitions.
    pub baseline: Option<Summary>,
    /// Warren's median over the baseline's.
    pub ratio: Option<f64>,
    /// The target, if there is one.
    pub target: Option<Target>,
    /// Whether the target was met.
    pub met: Option<bool>,
}

impl Row {
    /// A row from both sides' repetitions.
    pub fn new(
        metric: &str,
        unit: &str,
        warren: Vec<f64>,
        baseline: Vec<f64>,
        target: Option<Target>,
    ) -> Row {
        let warren = Summary::of(warren);
        let baseline = Summary::of(baseline);
        let ratio = match (&warren, &baseline) {
            (Some(w), Some(b)) if b.median != 0.0 => Some(w.median / b.median),
            _ => None,
        };
        let met = target.and_then(|target| match target {
            Target::RatioAtLeast(r) => ratio.map(|x| x >= r),
            Target::RatioAtMost(r) => ratio.map(|x| x <= r),
            Target::WarrenAtMost(v) => warren.as_ref().map(|w| w.median <= v),
            Target::WarrenAtLeast(v) => warren.as_ref().map(|w| w.median >= v),
        });
        Row {
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            warren,
            baseline,
            ratio,
            target,
            met,
        }
    }
}

/// One workload's rows and how it was run.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadReport {
    /// A one-line title.
    pub title: String,
    /// The settings used, in words.
    pub settings: Vec<String>,
    /// The figures.
    pub rows: Vec<Row>,
}

/// The machine the benchmark ran on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub nproc: usize,
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// CPU model.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// This machine, from /proc.
    pub fn detect() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let meminfo = read("/proc/meminfo");
        let memory_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib: memory_kib / 1024,
            cpu,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        }
    }
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// When it ran (UTC).
    pub date: String,
    /// Where it ran.
    pub machine: Machine,
    /// The broker's version.
    pub broker: String,
    /// The command that ran it.
    pub command: String,
    /// Repetitions per figure.
    pub reps: u32,
    /// Whether this was a smoke run (tiny sizes: the figures mean nothing).
    pub smoke: bool,
    /// Results by workload (`w1`, `w2`, `w3`, `w4`, `memory`, `defaults`, `calls`, `index`).
    pub workloads: BTreeMap<String, WorkloadReport>,
    /// Every queue the run created (all deleted at its end, with their dead-letter queues).
    pub queues: Vec<String>,
}

impl Report {
    /// The markdown table, followed by each workload's settings.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = format!(
            "{}; {} CPUs ({}), {} MiB, Linux {}; {}; {} repetitions{}\n\n`{}`\n\n",
            self.date,
            m.nproc,
            m.cpu,
            m.memory_mib,
            m.kernel,
            self.broker,
            self.reps,
            if self.smoke { " (SMOKE RUN)" } else { "" },
            self.command
        );
        out.push_str("| workload | metric | Warren median (min–max) | baseline median (min–max) | Warren/baseline | target | met |\n");
        out.push_str("|---|---|---:|---:|---:|---|---|\n");
        for (key, workload) in self.ordered() {
            for row in &workload.rows {
                let side = |s: &Option<Summary>| match s {
                    Some(s) => format!(
                        "{} ({}–{})",
                        number(s.median, &row.unit),
                        number(s.min, &row.unit),
                        number(s.max, &row.unit)
                    ),
                    None => "–".to_owned(),
                };
                out.push_str(&format!(
                    "| {} | {} ({}) | {} | {} | {} | {} | {} |\n",
                    key.to_uppercase(),
                    row.metric,
                    row.unit,
                    side(&row.warren),
                    side(&row.baseline),
                    row.ratio.map_or("–".to_owned(), |r| format!("{r:.2}")),
                    row.target.map_or(String::new(), Target::describe),
                    match row.met {
                        Some(true) => "yes",
                        Some(false) => "**no**",
                        None => "",
                    }
                ));
            }
        }
        for (key, workload) in self.ordered() {
            out.push_str(&format!(
                "\n**{}: {}**\n",
                key.to_uppercase(),
                workload.title
            ));
            for line in &workload.settings {
                out.push_str(&format!("- {line}\n"));
            }
        }
        out
    }

    /// The workloads in the order they are numbered, then memory, defaults, calls, index.
    fn ordered(&self) -> impl Iterator<Item = (&String, &WorkloadReport)> {
        let rank = |key: &str| match key {
            "memory" => 1,
            "defaults" => 2,
            "calls" => 3,
            "index" => 4,
            _ => 0,
        };
        let mut all: Vec<_> = self.workloads.iter().collect();
        all.sort_by_key(|(key, _)| (rank(key), key.as_str()));
        all.into_iter()
    }

    /// Writes the JSON file, creating its directory.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// A value formatted for its unit.
fn number(value: f64, unit: &str) -> String {
    match unit {
        "tasks/s" | "calls/s" | "events/s" => thousands(value.round() as u64),
        "s" => format!("{value:.3}"),
        "ms" => format!("{value:.2}"),
        "µs" => format!("{value:.1}"),
        _ => format!("{value:.1}"),
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_targets() {
        let row = Row::new(
            "publish",
            "tasks/s",
            vec![90.0],
            vec![100.0],
            Some(Target::RatioAtLeast(0.9)),
        );
        assert_eq!(row.ratio, Some(0.9));
        assert_eq!(row.met, Some(true));
        let row = Row::new(
            "rss",
            "MiB",
            vec![16.0],
            vec![],
            Some(Target::WarrenAtMost(15.0)),
        );
        assert_eq!((row.ratio, row.met), (None, Some(false)));
    }

    #[test]
    fn numbers_are_formatted_for_their_unit() {
        assert_eq!(number(1_234_567.4, "tasks/s"), "1,234,567");
        assert_eq!(number(999.0, "tasks/s"), "999");
        assert_eq!(number(1.23456, "s"), "1.235");
    }
}
