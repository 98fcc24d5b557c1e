//! The schedule file: what to publish and when. Parses and validates the TOML file (every
//! error names the schedule and the field), and computes tick times, which every replica must
//! agree on: interval ticks are multiples of the interval since the Unix epoch, cron ticks
//! are the pattern's matches in the schedule's time zone.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;
use warren_common::QueueKind;

/// Longest schedule name: it appears in task ids and in the name of the schedule's state queue.
const MAX_NAME: usize = 100;

/// Most missed ticks counted one by one for a cron schedule (a larger gap reports this many).
const MAX_COUNTED: u64 = 100_000;

/// What to do with the ticks that fell due while no scheduler was alive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissedPolicy {
    /// Publish none of them.
    #[default]
    Skip,
    /// Publish the latest of them, once.
    RunOnce,
}

/// When a schedule's ticks fall.
#[derive(Clone, Debug)]
pub enum Timing {
    /// Every multiple of the interval (in milliseconds) since the Unix epoch.
    Every(u64),
    /// The matches of a cron pattern, read in a time zone.
    Cron {
        /// The parsed pattern.
        pattern: Box<Cron>,
        /// The zone the pattern's fields are read in.
        timezone: Tz,
    },
}

/// One periodic task.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Unique name, the prefix of every tick's task id.
    pub name: String,
    /// Task name (selects the worker's handler).
    pub task: String,
    /// Work queue the task is published to.
    pub queue: String,
    /// Type of the work queue, used when declaring it.
    pub queue_type: QueueKind,
    /// Payload, published as JSON.
    pub payload: serde_json::Value,
    /// When ticks fall.
    pub timing: Timing,
    /// What to do with ticks missed while no scheduler ran.
    pub missed: MissedPolicy,
}

/// A schedule file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has fields of the wrong type.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message, with the line.
        message: String,
    },
    /// The file defines no schedule.
    #[error("{0}: no [[schedule]] defined")]
    Empty(String),
    /// A field of one schedule is invalid.
    #[error("schedule `{schedule}`: `{field}`: {problem}")]
    Invalid {
        /// The schedule's name (or its position, when the name itself is the problem).
        schedule: String,
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// The file's layout, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    schedule: Vec<RawSchedule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    name: String,
    task: String,
    queue: Option<String>,
    queue_type: Option<String>,
    payload: Option<toml::Value>,
    every: Option<String>,
    cron: Option<String>,
    timezone: Option<String>,
    missed: Option<String>,
}

/// Reads and validates a schedule file.
pub fn load(path: &Path) -> Result<Vec<Schedule>, ScheduleError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ScheduleError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, &shown)
}

/// Parses and validates the text of a schedule file; `path` is used in messages.
pub fn parse(text: &str, path: &str) -> Result<Vec<Schedule>, ScheduleError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| ScheduleError::Syntax {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    if raw.schedule.is_empty() {
        return Err(ScheduleError::Empty(path.to_owned()));
    }
    let mut names = HashSet::new();
    let mut schedules = Vec::with_capacity(raw.schedule.len());
    for (n, raw) in raw.schedule.into_iter().enumerate() {
        let schedule = validate(raw, n + 1)?;
        if !names.insert(schedule.name.clone()) {
            return Err(invalid(
                &schedule.name,
                "name",
                "is used by another schedule",
            ));
        }
        schedules.push(schedule);
    }
    Ok(schedules)
}

fn invalid(schedule: &str, field: &'static str, problem: impl Into<String>) -> ScheduleError {
    ScheduleError::Invalid {
        schedule: schedule.to_owned(),
        field,
        problem: problem.into(),
    }
}

fn validate(raw: RawSchedule, position: usize) -> Result<Schedule, ScheduleError> {
    let name = raw.name;
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.:".contains(c);
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(allowed) {
        let problem =
            format!("must be 1 to {MAX_NAME} letters, digits, `_`, `-`, `.` or `:` (got {name:?})");
        return Err(invalid(&format!("#{position}"), "name", problem));
    }
    let bad = |field, problem: String| Err(invalid(&name, field, problem));
    if raw.task.is_empty() || raw.task.len() > 255 {
        return bad("task", "must be 1 to 255 bytes".into());
    }
    let queue = raw.queue.unwrap_or_else(|| "default".to_owned());
    if queue.is_empty() || queue.len() > 199 || queue.starts_with("amq.") {
        return bad(
            "queue",
            "must be 1 to 199 bytes and not start with `amq.`".into(),
        );
    }
    let queue_type = match raw.queue_type.as_deref() {
        None | Some("quorum") => QueueKind::Quorum,
        Some("classic") => QueueKind::Classic,
        Some(other) => return bad("queue_type", format!("`{other}` is not quorum or classic")),
    };
    let missed = match raw.missed.as_deref() {
        None | Some("skip") => MissedPolicy::Skip,
        Some("run_once") => MissedPolicy::RunOnce,
        Some(other) => return bad("missed", format!("`{other}` is not skip or run_once")),
    };
    let payload = match raw.payload {
        None => serde_json::Value::Null,
        Some(value) => to_json(value).map_err(|problem| invalid(&name, "payload", problem))?,
    };
    let timing = timing(&name, raw.every, raw.cron, raw.timezone)?;
    Ok(Schedule {
        name,
        task: raw.task,
        queue,
        queue_type,
        payload,
        timing,
        missed,
    })
}

fn timing(
    name: &str,
    every: Option<String>,
    cron: Option<String>,
    timezone: Option<String>,
) -> Result<Timing, ScheduleError> {
    match (every, cron) {
        (Some(_), Some(_)) => Err(invalid(
            name,
            "every",
            "give either `every` or `cron`, not both",
        )),
        (None, None) => Err(invalid(
            name,
            "every",
            "give `every` (e.g. \"10s\") or `cron`",
        )),
        (Some(every), None) => {
            if timezone.is_some() {
                let problem = "applies to `cron` only: intervals are aligned to the Unix epoch";
                return Err(invalid(name, "timezone", problem));
            }
            let interval = humantime::parse_duration(&every)
                .map_err(|e| invalid(name, "every", format!("`{every}`: {e}")))?;
            if interval < Duration::from_secs(1) || interval.subsec_nanos() % 1_000_000 != 0 {
                let problem = "must be at least 1s, in whole milliseconds";
                return Err(invalid(name, "every", format!("`{every}`: {problem}")));
            }
            let ms = u64::try_from(interval.as_millis())
                .map_err(|_| invalid(name, "every", format!("`{every}` is too long")))?;
            Ok(Timing::Every(ms))
        }
        (None, Some(cron)) => {
            let pattern: Cron = cron
                .parse()
                .map_err(|e| invalid(name, "cron", format!("`{cron}`: {e}")))?;
            let timezone = match timezone {
                None => Tz::UTC,
                Some(zone) => zone.parse().map_err(|_| {
                    let problem = format!("`{zone}` is not an IANA time zone (e.g. Europe/Paris)");
                    invalid(name, "timezone", problem)
                })?,
            };
            let timing = Timing::Cron {
                pattern: Box::new(pattern),
                timezone,
            };
            // A pattern that never matches (e.g. 30 February) is refused now, not at run time.
            if next_after(&timing, warren_common::now_ms()).is_none() {
                return Err(invalid(name, "cron", format!("`{cron}` never matches")));
            }
            Ok(timing)
        }
    }
}

/// Converts a TOML value to JSON: dates and times become their TOML (RFC 3339) text.
fn to_json(value: toml::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as Json;
    Ok(match value {
        toml::Value::String(s) => Json::String(s),
        toml::Value::Integer(i) => Json::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Json::Number)
            .ok_or_else(|| format!("{f} cannot be written in JSON"))?,
        toml::Value::Boolean(b) => Json::Bool(b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(items) => {
            Json::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(table) => Json::Object(
            table
                .into_iter()
                .map(|(k, v)| Ok((k, to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// The first tick strictly after `t_ms` (milliseconds since the epoch), if any.
fn next_after(timing: &Timing, t_ms: u64) -> Option<u64> {
    match timing {
        Timing::Every(interval) => (t_ms / interval + 1).checked_mul(*interval),
        Timing::Cron { pattern, timezone } => {
            // Cron ticks fall on whole seconds: any whole second after the truncated time is
            // also after the exact time.
            let from = timezone.timestamp_opt((t_ms / 1000) as i64, 0).single()?;
            let next = pattern.find_next_occurrence(&from, false).ok()?;
            u64::try_from(next.timestamp_millis()).ok()
        }
    }
}

/// The last tick at or before `t_ms`, if any.
fn latest_until(timing: &Timing, t_ms: u64) -> Option<u64> {
    match timing {
        Timing::Every(interval) => Some(t_ms / interval * interval),
        Timing::Cron { pattern, timezone } => {
            let from = timezone.timestamp_opt((t_ms / 1000) as i64, 0).single()?;
            let last = pattern.find_previous_occurrence(&from, true).ok()?;
            u64::try_from(last.timestamp_millis()).ok()
        }
    }
}

impl Schedule {
    /// The first tick strictly after `t_ms` (milliseconds since the epoch); `None` when the
    /// pattern never matches again.
    pub fn next_after(&self, t_ms: u64) -> Option<u64> {
        next_after(&self.timing, t_ms)
    }

    /// The ticks in `(after_ms, until_ms]`: how many (a cron schedule stops counting at
    /// 100,000) and the latest.
    pub fn ticks_between(&self, after_ms: u64, until_ms: u64) -> (u64, Option<u64>) {
        if until_ms <= after_ms {
            return (0, None);
        }
        let latest = latest_until(&self.timing, until_ms).filter(|t| *t > after_ms);
        let Some(latest) = latest else {
            return (0, None);
        };
        let count = match &self.timing {
            Timing::Every(interval) => until_ms / interval - after_ms / interval,
            Timing::Cron { .. } => {
                let mut count = 0;
                let mut cursor = after_ms;
                while count < MAX_COUNTED {
                    match self.next_after(cursor) {
                        Some(tick) if tick <= until_ms => {
                            count += 1;
                            cursor = tick;
                        }
                        _ => break,
                    }
                }
                count
            }
        };
        (count, Some(latest))
    }

    /// The deterministic id of the task published for the tick at `tick_ms`:
    /// `<name>@<tick in RFC 3339, UTC>`, e.g. `cleanup@2025-03-30T01:00:00Z`.
    pub fn task_id(&self, tick_ms: u64) -> String {
        format!("{}@{}", self.name, tick_rfc3339(tick_ms))
    }
}

/// Splits a tick's task id into the schedule name and the tick (milliseconds since the epoch),
/// e.g. for a handler that wants to know which tick it runs for. `None` if `id` is not a tick
/// id.
pub fn parse_task_id(id: &str) -> Option<(&str, u64)> {
    let (name, time) = id.rsplit_once('@')?;
    let tick = DateTime::parse_from_rfc3339(time).ok()?.timestamp_millis();
    Some((name, u64::try_from(tick).ok()?))
}

/// A tick time in RFC 3339, UTC, with milliseconds only when there are some.
pub fn tick_rfc3339(tick_ms: u64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(tick_ms as i64) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => tick_ms.to_string(),
    }
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
