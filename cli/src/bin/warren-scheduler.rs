//! The `warren-scheduler` binary: publish periodic tasks from a schedule file. Run as many
//! replicas as you like; one publishes, the others stand by (see docs/scheduling.md).

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use warren_cli::producer::events::PublishedEventsArgs;
use warren_common::process::{exit, run_process, ProcessOptions};
use warren_common::{serve_admin, AmqpArgs, LogFormat, Shutdown};
use warren_producer::defaults::scheduler as defaults;
use warren_producer::scheduler::{self, schedule, SchedulerConfig};

/// Publish Warren tasks on a schedule; replicas elect one leader through the broker.
#[derive(Debug, Parser)]
#[command(name = "warren-scheduler", version)]
struct Args {
    #[command(flatten)]
    amqp: AmqpArgs,
    /// The schedule file (TOML; see docs/scheduling.md).
    #[arg(long, env = "WARREN_SCHEDULE", value_name = "FILE")]
    schedule: PathBuf,
    /// The scheduler group: replicas with the same name share one lease (`NAME.lease`) and
    /// one record of the last ticks (`NAME.tick.<schedule>`).
    #[arg(long, env = "WARREN_LEASE_NAME", value_name = "NAME", default_value = defaults::LEASE_NAME)]
    lease_name: String,
    /// How often a standby tries to take the lease (bounds the failover time).
    #[arg(long, env = "WARREN_LEASE_RETRY", default_value_t = defaults::LEASE_RETRY.into())]
    lease_retry: humantime::Duration,
    /// The task exchange: work queues are bound to it (tasks go through it with --via-exchange).
    #[arg(long, env = "WARREN_EXCHANGE", default_value = warren_common::DEFAULT_EXCHANGE)]
    exchange: String,
    /// Publish tasks through --exchange instead of straight to their queue (the default
    /// exchange): only then do queues you bound to the exchange yourself see them.
    #[arg(long, env = "WARREN_VIA_EXCHANGE")]
    via_exchange: bool,
    /// How long each publish waits for the broker's confirm.
    #[arg(long, env = "WARREN_CONFIRM_TIMEOUT", default_value_t = defaults::CONFIRM_TIMEOUT.into())]
    confirm_timeout: humantime::Duration,
    /// Dead-letter retention of the schedules' queues, if they have to be declared (must match
    /// the workers').
    #[command(flatten)]
    retention: warren_common::Retention,
    #[command(flatten)]
    events: PublishedEventsArgs,
    /// Address of the admin HTTP server (/metrics, /healthz, /readyz); port 0 picks one.
    #[arg(long, env = "WARREN_ADMIN_ADDR", default_value = defaults::ADMIN_ADDR)]
    admin_addr: SocketAddr,
    /// Log output format.
    #[arg(long, env = "WARREN_LOG_FORMAT", value_enum, default_value_t = LogFormat::default())]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    quiet_lease_attempts();
    run_process(ProcessOptions::service(args.log_format), |shutdown| {
        run(args, shutdown)
    })
}

/// A standby's every attempt at the lease is refused (405 RESOURCE_LOCKED) and lapin logs
/// each refused channel as an error, once a second. Unless `RUST_LOG` says otherwise, those
/// lines are left out: the scheduler reports the channel errors that matter itself.
fn quiet_lease_attempts() {
    if std::env::var_os("RUST_LOG").is_none() {
        // Before any other thread exists: setting the environment is sound here.
        std::env::set_var("RUST_LOG", "info,lapin::channel=off");
    }
}

async fn run(args: Args, shutdown: Shutdown) -> ExitCode {
    let config = match configure(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let (metrics, health) = (config.metrics.clone(), config.health.clone());
    let stop_admin = shutdown.abort.child_token();
    if let Err(error) = serve_admin(args.admin_addr, metrics, health, stop_admin).await {
        eprintln!("error: {error}");
        return ExitCode::from(exit::USAGE);
    }
    match scheduler::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "scheduler stopped");
            eprintln!("error: {error}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// Reads the broker files and the schedule file.
fn configure(args: &Args) -> anyhow::Result<SchedulerConfig> {
    let schedules = schedule::load(&args.schedule)?;
    let mut config = SchedulerConfig::new(schedules);
    config.amqp = args.amqp.resolve()?;
    config.exchange.clone_from(&args.exchange);
    config.via_exchange = args.via_exchange;
    config.lease_name.clone_from(&args.lease_name);
    config.lease_retry = args.lease_retry.into();
    config.confirm_timeout = args.confirm_timeout.into();
    config.retention = args.retention;
    config.events = args.events.config();
    config.validate()?;
    Ok(config)
}
