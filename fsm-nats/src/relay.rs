//! The outbox relay: a [`Dispatcher`](fsm_core::Dispatcher) handler that publishes each
//! effect to JetStream and returns only once the stream has acknowledged it.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, publish::PublishAck};
use fsm_core::{BoxError, Delivery, DispatchOptions, EffectId, StateMachine};

use crate::kind::effect_kind;
use crate::subject::{header_value, is_valid, token};

/// `fsm_relay_published_total`: publishes by `machine` and `result` (`stored`,
/// `duplicate` when the stream's duplicate window absorbed a re-publish, `failed`).
pub const RELAY_PUBLISHED: &str = "fsm_relay_published_total";

/// What a [`Relay`]'s handler returns to the dispatcher.
pub type RelayFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

type SubjectFn = dyn Fn(&EffectId, &str) -> String + Send + Sync;

/// Publishes the effects of machine type `M` to JetStream, one message per effect.
///
/// * Subject: `{prefix}.{machine}.{kind}` by default, the kind being the effect's serde
///   variant name ([`effect_kind`]); every part but the prefix passes through
///   [`token`], so no name can add a token or a wildcard.
///   [`with_subject`](Self::with_subject) replaces the rule.
/// * Payload: the effect as JSON, as the outbox holds it.
/// * Headers: `Nats-Msg-Id` and `id` are the [`EffectId`] (`Order/o-1/1/0`), and, as
///   Debezium's outbox router names them, `aggregatetype` (the machine type),
///   `aggregateid` (the instance id) and `type` (the kind). Values pass through
///   [`header_value`].
///
/// [`publish`](Self::publish) waits for the stream's acknowledgement, within
/// [`with_timeout`](Self::with_timeout) (5 s by default). The
/// [`handler`](Self::handler) hands that to a [`Dispatcher`](fsm_core::Dispatcher): the
/// outbox row is settled only after the ack, and a failed publish or a missing ack is a
/// failed attempt, retried with backoff and dead-lettered after `max_attempts`.
///
/// # Exactly once in the stream
///
/// An effect is published again when a worker died between the ack and settling its row
/// (after the lease), or when an ack was lost (after the backoff). JetStream drops a
/// message whose `Nats-Msg-Id` it stored within the stream's `duplicate_window`, so the
/// stream holds each effect once as long as the window is longer than the time between
/// the first and the last publish of one effect: see
/// [`duplicate_window_needed`](Self::duplicate_window_needed). A dead letter requeued
/// later than that may be stored twice.
///
/// # Examples
///
/// ```no_run
/// use fsm_core::testing::Order;
/// use fsm_core::{DispatchOptions, Dispatcher, MemoryStore};
/// use fsm_nats::Relay;
/// use tokio_util::sync::CancellationToken;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let relay = Relay::<Order>::new(async_nats::jetstream::new(client), "fsm.effects");
/// // The stream capturing `fsm.effects.>` needs a duplicate window of at least:
/// let window = relay.duplicate_window_needed(&DispatchOptions::default());
/// # let _ = window;
///
/// let store = MemoryStore::new();
/// let shutdown = CancellationToken::new();
/// Dispatcher::new(store).run::<Order, _, _>(relay.handler(), shutdown).await?;
/// # Ok(()) }
/// ```
pub struct Relay<M> {
    jetstream: jetstream::Context,
    subject: Arc<SubjectFn>,
    timeout: Duration,
    machine: PhantomData<fn() -> M>,
}

impl<M> Clone for Relay<M> {
    fn clone(&self) -> Self {
        Relay {
            jetstream: self.jetstream.clone(),
            subject: Arc::clone(&self.subject),
            timeout: self.timeout,
            machine: PhantomData,
        }
    }
}

impl<M> fmt::Debug for Relay<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why an effect was not published; the dispatcher retries it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The effect does not serialize to JSON.
    #[error("effect {id}: does not serialize: {source}")]
    Serialize {
        /// The effect.
        id: EffectId,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// The subject rule produced a subject that cannot be published to.
    #[error("effect {id}: invalid subject {subject:?}")]
    InvalidSubject {
        /// The effect.
        id: EffectId,
        /// What the rule produced.
        subject: String,
    },
    /// The server refused the publish or its ack said so (no stream for the subject,
    /// connection lost, ...).
    #[error("effect {id}: publish to {subject} failed: {source}")]
    Publish {
        /// The effect.
        id: EffectId,
        /// Where it went.
        subject: String,
        /// The client's error.
        #[source]
        source: PublishError,
    },
    /// No ack within the relay's timeout; the message may or may not be stored.
    #[error("effect {id}: no ack from the stream for {subject} within {after:?}")]
    TimedOut {
        /// The effect.
        id: EffectId,
        /// Where it went.
        subject: String,
        /// The timeout.
        after: Duration,
    },
}

impl<M: StateMachine> Relay<M> {
    /// A relay publishing to `{prefix}.{machine}.{kind}` with a 5 s timeout.
    ///
    /// # Panics
    ///
    /// When `prefix` is not a valid subject ([`is_valid`]): it is the program's, not
    /// data.
    pub fn new(jetstream: jetstream::Context, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        assert!(
            is_valid(&prefix),
            "relay subject prefix {prefix:?} is not a valid subject"
        );
        Relay {
            jetstream,
            subject: Arc::new(move |id: &EffectId, kind: &str| {
                format!("{prefix}.{}.{}", token(id.machine), token(kind))
            }),
            timeout: Duration::from_secs(5),
            machine: PhantomData,
        }
    }

    /// Builds subjects with `rule`, given the effect's id and kind; pass names through
    /// [`token`]. A subject that is not valid fails the publish.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(jetstream: async_nats::jetstream::Context) {
    /// use fsm_nats::{Relay, subject::token};
    /// let relay = Relay::<fsm_core::testing::Order>::new(jetstream, "fsm")
    ///     .with_subject(|id, kind| format!("billing.{}.{}", token(&id.id), token(kind)));
    /// # }
    /// ```
    #[must_use]
    pub fn with_subject<F>(mut self, rule: F) -> Self
    where
        F: Fn(&EffectId, &str) -> String + Send + Sync + 'static,
    {
        self.subject = Arc::new(rule);
        self
    }

    /// How long a publish may wait for its ack; keep it well below the dispatcher's
    /// lease.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The shortest stream `duplicate_window` for this relay driven by a
    /// [`Dispatcher`](fsm_core::Dispatcher) with `options`: [`duplicate_window`] with
    /// this relay's timeout.
    pub fn duplicate_window_needed(&self, options: &DispatchOptions) -> Duration {
        duplicate_window(options, self.timeout)
    }

    /// The subject and headers an effect is published with.
    fn message(
        &self,
        delivery: &Delivery<M::Effect>,
    ) -> Result<(String, PublishMessage), RelayError> {
        let id = &delivery.id;
        let kind = effect_kind(&delivery.effect)
            .or(M::DEFINITION.effect)
            .unwrap_or("effect");
        let subject = (self.subject)(id, kind);
        if !is_valid(&subject) {
            return Err(RelayError::InvalidSubject {
                id: id.clone(),
                subject,
            });
        }
        let payload =
            serde_json::to_vec(&delivery.effect).map_err(|source| RelayError::Serialize {
                id: id.clone(),
                source,
            })?;
        let effect_id = id.to_string();
        let effect_id = header_value(&effect_id);
        let mut headers = HeaderMap::new();
        headers.insert("id", &*effect_id);
        headers.insert("aggregatetype", &*header_value(id.machine));
        headers.insert("aggregateid", &*header_value(&id.id));
        headers.insert("type", &*header_value(kind));
        let message = PublishMessage::build()
            .payload(payload.into())
            .headers(headers)
            .message_id(&*effect_id);
        Ok((subject, message))
    }

    /// Publishes one effect and waits for the stream's ack; `ack.duplicate` tells that
    /// the stream already held it.
    ///
    /// # Errors
    ///
    /// [`RelayError`]: the effect does not serialize, the subject is invalid, the publish
    /// or its ack failed, or no ack came within the timeout.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the message stored without an ack seen; publishing
    /// it again is absorbed by the duplicate window.
    pub async fn publish(&self, delivery: &Delivery<M::Effect>) -> Result<PublishAck, RelayError> {
        let machine = M::DEFINITION.name;
        let (subject, message) = self.message(delivery)?;
        let publish = async {
            let ack: PublishAckFuture = self
                .jetstream
                .send_publish(subject.clone(), message)
                .await?;
            ack.await
        };
        let result = match tokio::time::timeout(self.timeout, publish).await {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(source)) => Err(RelayError::Publish {
                id: delivery.id.clone(),
                subject,
                source,
            }),
            Err(_elapsed) => Err(RelayError::TimedOut {
                id: delivery.id.clone(),
                subject,
                after: self.timeout,
            }),
        };
        let label = match &result {
            Ok(ack) if ack.duplicate => "duplicate",
            Ok(_) => "stored",
            Err(_) => "failed",
        };
        metrics::counter!(RELAY_PUBLISHED, "machine" => machine, "result" => label).increment(1);
        match &result {
            Ok(ack) => {
                tracing::debug!(machine, effect = %delivery.id, stream = %ack.stream, seq = ack.sequence, duplicate = ack.duplicate, "effect published");
            }
            Err(err) => {
                tracing::warn!(machine, effect = %delivery.id, attempt = delivery.attempt, error = %err, "effect not published");
            }
        }
        result
    }

    /// The handler for [`Dispatcher::run`](fsm_core::Dispatcher::run) and
    /// [`Dispatcher::dispatch_once`](fsm_core::Dispatcher::dispatch_once): publishes
    /// each delivery and succeeds once the stream has acked it.
    pub fn handler(&self) -> impl Fn(Delivery<M::Effect>) -> RelayFuture + Send + Sync + 'static {
        let relay = self.clone();
        move |delivery| {
            let relay = relay.clone();
            Box::pin(async move {
                relay.publish(&delivery).await?;
                Ok(())
            })
        }
    }
}

/// The shortest stream `duplicate_window` that keeps every re-publish of one effect a
/// duplicate, for a [`Dispatcher`](fsm_core::Dispatcher) with `options` and a relay
/// with `publish_timeout`: each of the `max_attempts - 1` retries may come up to the
/// lease (a worker died) or the timeout plus the backoff (an ack was lost) after the
/// attempt before it, plus one idle poll, and the last attempt may take the timeout.
///
/// With the default options and the default 5 s timeout this is 3 min 35.7 s, longer
/// than JetStream's default window of 2 min.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use fsm_core::DispatchOptions;
///
/// let window = fsm_nats::duplicate_window(&DispatchOptions::default(), Duration::from_secs(5));
/// assert_eq!(window, Duration::from_millis(215_700));
///
/// // A short lease and fewer attempts need a shorter window.
/// let options = DispatchOptions { lease: Duration::from_secs(10), max_attempts: 4, ..Default::default() };
/// assert_eq!(fsm_nats::duplicate_window(&options, Duration::from_secs(2)), Duration::from_millis(32_300));
/// ```
pub fn duplicate_window(options: &DispatchOptions, publish_timeout: Duration) -> Duration {
    let timeout = publish_timeout;
    (1..options.max_attempts.max(1))
        .map(|attempt| {
            options
                .lease
                .max(timeout.saturating_add(options.retry_delay(attempt)))
                .saturating_add(options.idle_poll)
        })
        .fold(timeout, Duration::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_dispatcher_needs_more_than_the_default_window() {
        let window = duplicate_window(&DispatchOptions::default(), Duration::from_secs(5));
        // 7 retries, each after the 30 s lease (longer than 5 s + any backoff up to
        // 12.8 s) and a 100 ms poll, then a last 5 s timeout.
        assert_eq!(window, Duration::from_millis(7 * 30_100 + 5_000));
        assert!(window > Duration::from_secs(120));
    }

    #[test]
    fn long_backoffs_count_when_they_exceed_the_lease() {
        let options = DispatchOptions {
            lease: Duration::from_secs(1),
            max_attempts: 3,
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(3),
            idle_poll: Duration::ZERO,
            ..DispatchOptions::default()
        };
        let timeout = Duration::from_millis(500);
        // retry 1: 0.5 + 2 s; retry 2: 0.5 + 3 s (capped); then 0.5 s.
        assert_eq!(
            duplicate_window(&options, timeout),
            Duration::from_millis(2_500 + 3_500 + 500)
        );
    }
}
