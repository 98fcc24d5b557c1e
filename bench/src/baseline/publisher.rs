//! The baseline publisher: one connection, one confirm-mode channel, publishes pipelined up
//! to a window of unconfirmed messages, every confirm checked in order.

use crate::broker::{declare_plain_quorum, Broker};
use anyhow::{bail, Context};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};
use std::collections::VecDeque;

/// A confirm-mode channel publishing to the default exchange.
pub struct RawPublisher {
    conn: Connection,
    channel: Channel,
    envelope: bool,
}

impl RawPublisher {
    /// Connects, opens a confirm channel and declares `queue`. With `envelope`, messages
    /// carry Warren's envelope fields too (see [`super::properties`]).
    pub async fn connect(broker: &Broker, queue: &str, envelope: bool) -> anyhow::Result<Self> {
        let conn = broker.connect("warren-bench baseline publisher").await?;
        declare_plain_quorum(&conn, queue).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(RawPublisher {
            conn,
            channel,
            envelope,
        })
    }

    /// Publishes one message, returning its pending confirm.
    pub async fn publish(
        &self,
        queue: &str,
        task: &str,
        body: &[u8],
    ) -> anyhow::Result<PublisherConfirm> {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                super::properties(task, self.envelope),
            )
            .await
            .context("basic.publish")?;
        Ok(confirm)
    }

    /// Publishes `count` copies of `body` with at most `window` confirms outstanding, and
    /// returns once every one is confirmed.
    pub async fn publish_many(
        &self,
        queue: &str,
        task: &str,
        body: &[u8],
        count: usize,
        window: usize,
    ) -> anyhow::Result<()> {
        let window = window.max(1);
        let mut in_flight = VecDeque::with_capacity(window);
        for _ in 0..count {
            if in_flight.len() >= window {
                let oldest: PublisherConfirm = in_flight.pop_front().expect("the window is full");
                check(oldest.await?)?;
            }
            in_flight.push_back(self.publish(queue, task, body).await?);
        }
        for confirm in in_flight {
            check(confirm.await?)?;
        }
        Ok(())
    }

    /// Closes the channel and the connection.
    pub async fn close(&self) {
        let _ = self.channel.close(200, "bye".into()).await;
        let _ = self.conn.close(200, "bye".into()).await;
    }
}

/// Fails unless the broker acked the message.
pub fn check(confirmation: Confirmation) -> anyhow::Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => bail!("a baseline message was returned as unroutable"),
        Confirmation::Nack(_) => bail!("the broker nacked a baseline message"),
        Confirmation::NotRequested => bail!("confirms are not enabled"),
    }
}
