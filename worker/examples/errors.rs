//! A handler's errors decide its task's fate: a permanent error dead-letters the task at once,
//! any other error is retried with backoff. `docs/failures.md` shows the handler. Run
//! `cargo run -p warren-worker --example errors`: each order goes through
//! `warren_worker::testing` as a worker would run it, without a broker, and what the worker
//! would do with it is printed.

use serde::{Deserialize, Serialize};
use std::fmt;
use warren_worker::testing::perform;
use warren_worker::{Outcome, Registry, Task};
use warren_worker::{Permanent, TaskContext, TaskError};

async fn charge(ctx: TaskContext, order: Order) -> Result<(), TaskError> {
    if order.amount_cents == 0 {
        // Can never succeed: dead-lettered at once as `permanent`.
        return Err(TaskError::permanent("amount is zero"));
    }
    let customer = lookup(&order.customer).await?; // any std::error::Error: retryable
    if customer.closed {
        Err(Permanent(format!("customer {} is closed", customer.id)))?; // permanent too
    }
    charge_card(&ctx.id, &customer, order.amount_cents).await?; // retryable
    Ok(())
}

/// Charge a customer for an order.
#[derive(Debug, Serialize, Deserialize)]
struct Order {
    customer: String,
    amount_cents: u64,
}

impl Task for Order {
    const NAME: &'static str = "orders.charge";
}

struct Customer {
    id: String,
    closed: bool,
}

/// A service that did not answer: another attempt may succeed.
#[derive(Debug)]
struct Unavailable(&'static str);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is unavailable", self.0)
    }
}

impl std::error::Error for Unavailable {}

/// The customer service: `offline` stands for one that does not answer.
async fn lookup(customer: &str) -> Result<Customer, Unavailable> {
    match customer {
        "offline" => Err(Unavailable("the customer service")),
        id => Ok(Customer {
            id: id.to_owned(),
            closed: id.starts_with("closed"),
        }),
    }
}

/// The payment provider, given the task id so that a task run twice charges once.
async fn charge_card(_task_id: &str, _: &Customer, amount_cents: u64) -> Result<(), Unavailable> {
    match amount_cents {
        1..=100_000 => Ok(()),
        _ => Err(Unavailable("the payment provider")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut registry = Registry::new();
    registry.handle(charge);
    let orders = [
        ("ada", 1_250, "acked"),
        ("ada", 0, "dead-lettered (permanent)"),
        ("closed-bob", 990, "dead-lettered (permanent)"),
        ("offline", 500, "retried (error)"),
        ("ada", 500_000, "retried (error)"),
    ];
    for (customer, amount_cents, expected) in orders {
        let order = Order {
            customer: customer.to_owned(),
            amount_cents,
        };
        let outcome = perform(&registry, &order).await;
        println!("{order:?}: {}", fate(&outcome));
        assert!(fate(&outcome).starts_with(expected), "{outcome:?}");
    }
}

/// What a worker does with the task, in words.
fn fate(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ack => "acked".to_owned(),
        Outcome::Retry { after, failure } => format!(
            "retried ({}) in {:.1} s: {}",
            failure.kind,
            after.as_secs_f64(),
            failure.reason
        ),
        Outcome::DeadLetter(failure) => {
            format!("dead-lettered ({}): {}", failure.kind, failure.reason)
        }
        Outcome::Isolate { returns } => format!("isolated after {returns} returns"),
        Outcome::Cancelled => "cancelled (acked, not retried)".to_owned(),
    }
}
