//! `warren-producer tasks wait ID`: polls the status index until the task ends, prints its
//! final status, and exits with a code a script can branch on.

use super::tasks::{failed, status_text};
use std::process::ExitCode;
use std::time::Duration;
use warren_producer::status::{ClientError, State, StatusClient, TaskStatus};

/// The task succeeded.
const SUCCEEDED: u8 = 0;
/// The task was dead-lettered (`error.kind` says why).
pub(super) const DEAD_LETTERED: u8 = 4;
/// The task expired before it could run.
pub(super) const EXPIRED: u8 = 5;
/// The task ended in another way (one added after these codes, such as a cancellation).
pub(super) const ENDED_OTHERWISE: u8 = 6;
/// The task had not ended within `--timeout` (sysexits' EX_TEMPFAIL: ask again later).
pub(super) const NOT_ENDED: u8 = 75;

/// Arguments of `tasks wait`.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// The task's id.
    id: String,
    /// How long to wait for the task to end (`30s`, `5m`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Waits for the task, prints its final status (or the last one seen, on a timeout).
/// Exit codes: 0 succeeded, 4 dead-lettered, 5 expired, 6 ended otherwise, 75 not ended
/// within the timeout, 1 the server refused the request, 69 it could not be reached.
pub async fn run(client: &StatusClient, args: &WaitArgs, json: bool) -> anyhow::Result<ExitCode> {
    let (status, code) = match client.wait(&args.id, args.timeout).await {
        Ok(status) => {
            let code = ending_code(status.state);
            (status, code)
        }
        Err(ClientError::TimedOut { last, timeout }) => {
            eprintln!(
                "error: task {} has not ended within {}: it is {}",
                last.id,
                humantime::format_duration(timeout),
                last.state
            );
            (*last, NOT_ENDED)
        }
        Err(error) => return Ok(failed(&error)),
    };
    print(&status, json)?;
    Ok(ExitCode::from(code))
}

fn print(status: &TaskStatus, json: bool) -> anyhow::Result<()> {
    let value = serde_json::to_value(status)?;
    if json {
        println!("{value}");
    } else {
        print!("{}", status_text(&value));
    }
    Ok(())
}

/// The exit code of an ended task's state.
fn ending_code(state: State) -> u8 {
    match state {
        State::Succeeded => SUCCEEDED,
        State::DeadLettered => DEAD_LETTERED,
        State::Expired => EXPIRED,
        _ => ENDED_OTHERWISE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ending_has_its_own_exit_code() {
        let codes = [State::Succeeded, State::DeadLettered, State::Expired].map(ending_code);
        assert_eq!(codes, [0, 4, 5]);
        assert!(!codes.contains(&NOT_ENDED) && !codes.contains(&ENDED_OTHERWISE));
    }
}
