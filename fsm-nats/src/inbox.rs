//! The inbox: a JetStream pull consumer whose messages become commands fired on a store,
//! each exactly once.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, Message};
use fsm_core::{BoxError, Command, Error, Outcome, StateMachine, Store};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

/// `fsm_inbox_messages_total`: inbox messages by `machine`, `stream` and `result`
/// (`applied`, `duplicate`, `poison`, `retry`).
pub const INBOX_MESSAGES: &str = "fsm_inbox_messages_total";

/// How an [`Inbox`] pulls and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxOptions {
    /// Messages asked for per pull request.
    pub batch: usize,
    /// How long a pull request waits for messages to arrive.
    pub wait: Duration,
    /// The redelivery delay asked for (a nak with delay) after a transient failure, and
    /// the pause after a failed pull.
    pub retry_delay: Duration,
}

impl Default for InboxOptions {
    fn default() -> Self {
        InboxOptions {
            batch: 64,
            wait: Duration::from_secs(5),
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// What one [`Inbox::process_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxReport {
    /// Messages received.
    pub received: usize,
    /// Fired and applied now; acked.
    pub applied: usize,
    /// Fired before (a redelivery): `Outcome::Duplicate`; acked.
    pub duplicate: usize,
    /// Undecodable or permanently rejected: terminated and recorded.
    pub poison: usize,
    /// Not fired because of a transient failure (this one's or an earlier message's in
    /// the batch): nak'd with [`InboxOptions::retry_delay`], to be redelivered.
    pub retried: usize,
}

/// A message that will never apply, terminated (`AckKind::Term`) so it is not
/// redelivered.
#[derive(Debug)]
pub struct Poison<'a> {
    /// The message.
    pub message: &'a Message,
    /// Its stream.
    pub stream: &'a str,
    /// Its stream sequence.
    pub sequence: u64,
    /// Deliveries of it so far, this one included.
    pub delivered: i64,
    /// The instance it was for, when it decoded.
    pub id: Option<&'a str>,
    /// Why.
    pub reason: PoisonReason<'a>,
}

/// Why a message is poison.
#[derive(Debug)]
#[non_exhaustive]
pub enum PoisonReason<'a> {
    /// The decode function refused it.
    Undecodable(String),
    /// The store refused its command with a permanent error (not
    /// [`Error::is_transient`]): an illegal event, guards that said no, an unknown
    /// instance, a key used for another event, an invalid id, a corrupt row.
    Rejected(&'a Error),
    /// The fire panicked (a guard or an action did): it would again.
    Panicked(String),
    /// A transient failure on the last delivery the consumer's `max_deliver` allows:
    /// recorded here rather than dropped silently by the server.
    Exhausted(&'a Error),
}

impl fmt::Display for PoisonReason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoisonReason::Undecodable(why) => write!(f, "undecodable: {why}"),
            PoisonReason::Rejected(err) => write!(f, "rejected: {err}"),
            PoisonReason::Panicked(why) => write!(f, "fire panicked: {why}"),
            PoisonReason::Exhausted(err) => write!(f, "last delivery failed: {err}"),
        }
    }
}

/// Why an inbox could not pull.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// Getting or creating the durable consumer failed.
    #[error("consumer {consumer} on stream {stream}: {source}")]
    Consumer {
        /// The stream.
        stream: String,
        /// The durable name.
        consumer: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// A pull request failed (connection lost, consumer deleted, ...).
    #[error("pull from consumer {consumer} on stream {stream}: {source}")]
    Pull {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
}

type PoisonFn = dyn Fn(&Poison<'_>) + Send + Sync;

/// Fires the messages of a JetStream pull consumer as commands of machine type `M`.
///
/// `decode` turns a message into the instance id and the event; the command is
/// `Command::new(event).from_source(stream, stream_sequence)`, so a message delivered
/// again (its ack lost, its consumer killed between the commit and the ack, a nak)
/// fires as [`Outcome::Duplicate`] and changes nothing. A message is acked only after
/// its transition committed (applied now or before).
///
/// * A message that does not decode, or whose command fails with a permanent error
///   (not [`Error::is_transient`]: illegal, guard-rejected, unknown instance, key
///   reused, invalid, corrupt), is poison: terminated with `AckKind::Term`, never
///   redelivered, and recorded: [`on_poison`](Self::on_poison), a `tracing` warning and
///   the counter `fsm_inbox_messages_total{result="poison"}`.
/// * A transient failure (database, conflict) naks the message with
///   [`InboxOptions::retry_delay`], and the rest of its batch unfired with it (a
///   failing database is not hammered message by message); the server redelivers them
///   after the delay. If the consumer limits deliveries (`max_deliver`; unlimited by
///   default and in [`consumer_config`]), a message on its last delivery is fired
///   anyway, and a transient failure then makes it poison
///   ([`PoisonReason::Exhausted`]) instead of a message the server drops unrecorded.
///
/// Messages apply in stream order, except that a redelivered one (nak'd, or its ack
/// lost) applies after messages delivered meanwhile; a consumer with
/// `max_ack_pending = 1` keeps strict order at the cost of one message in flight.
///
/// # Examples
///
/// ```no_run
/// use async_nats::jetstream;
/// use fsm_core::testing::{Order, OrderEvent};
/// use fsm_core::MemoryStore;
/// use fsm_nats::Inbox;
/// use tokio_util::sync::CancellationToken;
///
/// #[derive(serde::Deserialize)]
/// struct Envelope { id: String, event: OrderEvent }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let jetstream = jetstream::new(async_nats::connect("nats://127.0.0.1:4222").await?);
/// let stream = jetstream.get_stream("ORDERS").await?;
/// let decode = |message: &jetstream::Message| {
///     serde_json::from_slice::<Envelope>(&message.payload).map(|e| (e.id, e.event))
/// };
/// let inbox = Inbox::<_, Order, _>::durable(MemoryStore::new(), &stream, "orders-inbox", decode)
///     .await?
///     .on_poison(|poison| eprintln!("poison {}#{}: {}", poison.stream, poison.sequence, poison.reason));
/// inbox.run(CancellationToken::new()).await?;
/// # Ok(()) }
/// ```
pub struct Inbox<S, M, D> {
    store: S,
    consumer: PullConsumer,
    decode: D,
    options: InboxOptions,
    on_poison: Option<Arc<PoisonFn>>,
    /// The key's source instead of the message's stream name.
    source: Option<String>,
    machine: PhantomData<fn() -> M>,
}

impl<S, M, D> fmt::Debug for Inbox<S, M, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.consumer.cached_info();
        f.debug_struct("Inbox")
            .field("stream", &info.stream_name)
            .field("consumer", &info.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The config of a durable pull consumer named `durable` with explicit acks, the kind
/// an [`Inbox`] needs; adjust `ack_wait` (30 s), `max_ack_pending`, filters, and pass
/// it to `stream.get_or_create_consumer`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let config = fsm_nats::consumer_config("orders-inbox");
/// assert_eq!(config.durable_name.as_deref(), Some("orders-inbox"));
/// assert_eq!(config.ack_wait, Duration::from_secs(30));
/// ```
pub fn consumer_config(durable: impl Into<String>) -> pull::Config {
    pull::Config {
        durable_name: Some(durable.into()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        ..pull::Config::default()
    }
}

/// What became of one message.
enum Handled {
    Applied,
    Duplicate,
    Poison,
    Retry,
}

impl Handled {
    fn label(&self) -> &'static str {
        match self {
            Handled::Applied => "applied",
            Handled::Duplicate => "duplicate",
            Handled::Poison => "poison",
            Handled::Retry => "retry",
        }
    }
}

impl<S, M, D, E> Inbox<S, M, D>
where
    S: Store + Clone,
    M: StateMachine,
    D: Fn(&Message) -> Result<(String, M::Event), E> + Send + Sync,
    E: fmt::Display,
{
    /// An inbox over `consumer` (pull, explicit acks) firing on `store` (cloned into
    /// the task of each fire, as sqlx stores and `MemoryStore` are cheaply).
    pub fn new(store: S, consumer: PullConsumer, decode: D) -> Self {
        Inbox {
            store,
            consumer,
            decode,
            options: InboxOptions::default(),
            on_poison: None,
            source: None,
            machine: PhantomData,
        }
    }

    /// An inbox over the durable pull consumer `durable` of `stream`, created with
    /// [`consumer_config`] if it does not exist.
    ///
    /// # Errors
    ///
    /// [`InboxError::Consumer`] when the server refuses.
    pub async fn durable(
        store: S,
        stream: &jetstream::stream::Stream,
        durable: &str,
        decode: D,
    ) -> Result<Self, InboxError> {
        let consumer = stream
            .get_or_create_consumer(durable, consumer_config(durable))
            .await
            .map_err(|e| InboxError::Consumer {
                stream: stream.cached_info().config.name.clone(),
                consumer: durable.to_owned(),
                source: Box::new(e),
            })?;
        Ok(Inbox::new(store, consumer, decode))
    }

    /// Replaces the options.
    #[must_use]
    pub fn with_options(mut self, options: InboxOptions) -> Self {
        self.options = options;
        self
    }

    /// Keys commands `source#sequence` instead of `stream#sequence`. A stream recreated
    /// under its old name numbers its messages from 1 again: give the new one a source
    /// of its own, so its messages do not meet the keys of the old one's.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(consumer: async_nats::jetstream::consumer::PullConsumer) {
    /// # let decode = |_: &async_nats::jetstream::Message| Err::<(String, fsm_core::testing::OrderEvent), _>("");
    /// let inbox = fsm_nats::Inbox::<_, fsm_core::testing::Order, _>::new(fsm_core::MemoryStore::new(), consumer, decode)
    ///     .with_source("ORDERS-2026-12"); // keys ORDERS-2026-12#1, #2, ...
    /// # }
    /// ```
    #[must_use]
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Calls `record` for each poison message, before it is terminated.
    #[must_use]
    pub fn on_poison<F>(mut self, record: F) -> Self
    where
        F: Fn(&Poison<'_>) + Send + Sync + 'static,
    {
        self.on_poison = Some(Arc::new(record));
        self
    }

    /// One pull request: handles up to [`InboxOptions::batch`] messages as they arrive
    /// within [`InboxOptions::wait`], in order.
    ///
    /// # Errors
    ///
    /// [`InboxError::Pull`] when the pull request fails; messages handled before it
    /// stay handled.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the message in hand unacked. Its fire runs in a task
    /// of its own and is never cut off halfway; the message is redelivered after the
    /// consumer's `ack_wait` and fires as a duplicate if that fire committed.
    pub async fn process_once(&self) -> Result<InboxReport, InboxError> {
        self.pull(None).await
    }

    /// Pulls and fires until `shutdown` is cancelled; the message in hand is finished
    /// first. A failed pull is logged and retried after [`InboxOptions::retry_delay`].
    ///
    /// # Errors
    ///
    /// None today: the `Result` leaves room for fatal conditions.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), InboxError> {
        while !shutdown.is_cancelled() {
            if let Err(err) = self.pull(Some(&shutdown)).await {
                tracing::warn!(machine = M::DEFINITION.name, error = %err, "inbox pull failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(self.options.retry_delay) => {}
                }
            }
        }
        Ok(())
    }

    fn pull_error(&self, source: impl Into<BoxError>) -> InboxError {
        let info = self.consumer.cached_info();
        InboxError::Pull {
            stream: info.stream_name.clone(),
            consumer: info.name.clone(),
            source: source.into(),
        }
    }

    async fn pull(&self, shutdown: Option<&CancellationToken>) -> Result<InboxReport, InboxError> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(self.options.batch)
            .expires(self.options.wait)
            .messages()
            .await
            .map_err(|e| self.pull_error(e))?;
        let mut report = InboxReport::default();
        // After a transient failure the rest of the batch is nak'd unfired.
        let mut failing = false;
        loop {
            let next = match shutdown {
                Some(shutdown) => tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    next = batch.next() => next,
                },
                None => batch.next().await,
            };
            let Some(message) = next else { break };
            let message = message.map_err(|e| self.pull_error(e))?;
            report.received += 1;
            let last = message
                .info()
                .is_ok_and(|info| self.last_delivery(info.delivered));
            let handled = if failing && !last {
                self.retry(&message).await;
                Handled::Retry
            } else {
                self.handle(&message).await
            };
            match handled {
                Handled::Applied => report.applied += 1,
                Handled::Duplicate => report.duplicate += 1,
                Handled::Poison => report.poison += 1,
                Handled::Retry => {
                    failing = true;
                    report.retried += 1;
                }
            }
        }
        Ok(report)
    }

    async fn handle(&self, message: &Message) -> Handled {
        let machine = M::DEFINITION.name;
        let (stream, sequence, delivered) = match message.info() {
            Ok(info) => (info.stream.to_owned(), info.stream_sequence, info.delivered),
            Err(err) => {
                // Not a JetStream message: nothing to key it by, nothing to ack it with.
                tracing::warn!(machine, subject = %message.subject, error = %err, "inbox message without JetStream metadata skipped");
                return Handled::Poison;
            }
        };
        let handled = match (self.decode)(message) {
            Err(why) => {
                self.terminate(Poison {
                    message,
                    stream: &stream,
                    sequence,
                    delivered,
                    id: None,
                    reason: PoisonReason::Undecodable(why.to_string()),
                })
                .await
            }
            Ok((id, event)) => {
                let command = Command::<M> { event, key: None }
                    .from_source(self.source.as_deref().unwrap_or(&stream), sequence);
                // Its own task: a dropped inbox never cancels a fire halfway (a cancelled
                // SQLite transaction can keep the write lock, sqlx#3932); the message stays
                // unacked and its redelivery finds the commit.
                let store = self.store.clone();
                let fired = {
                    let id = id.clone();
                    tokio::spawn(async move { store.fire(&id, command).await })
                };
                let fired = match fired.await {
                    Ok(fired) => fired,
                    Err(join) => {
                        let panic = join.to_string();
                        return self.counted(
                            &stream,
                            self.terminate(Poison {
                                message,
                                stream: &stream,
                                sequence,
                                delivered,
                                id: Some(&id),
                                reason: PoisonReason::Panicked(panic),
                            })
                            .await,
                        );
                    }
                };
                match fired {
                    Ok(outcome) => {
                        if let Err(err) = message.ack().await {
                            // Redelivered later, and then a duplicate.
                            tracing::warn!(machine, stream, seq = sequence, error = %err, "inbox ack failed");
                        }
                        match outcome {
                            Outcome::Applied(_) => Handled::Applied,
                            Outcome::Duplicate(_) => Handled::Duplicate,
                        }
                    }
                    Err(err) if err.is_transient() && !self.last_delivery(delivered) => {
                        tracing::warn!(machine, stream, seq = sequence, %id, error = %err, "inbox command failed; redelivery asked");
                        self.retry(message).await;
                        Handled::Retry
                    }
                    Err(err) if err.is_transient() => {
                        self.terminate(Poison {
                            message,
                            stream: &stream,
                            sequence,
                            delivered,
                            id: Some(&id),
                            reason: PoisonReason::Exhausted(&err),
                        })
                        .await
                    }
                    Err(err) => {
                        self.terminate(Poison {
                            message,
                            stream: &stream,
                            sequence,
                            delivered,
                            id: Some(&id),
                            reason: PoisonReason::Rejected(&err),
                        })
                        .await
                    }
                }
            }
        };
        self.counted(&stream, handled)
    }

    fn counted(&self, stream: &str, handled: Handled) -> Handled {
        let (machine, stream) = (M::DEFINITION.name, stream.to_owned());
        metrics::counter!(INBOX_MESSAGES, "machine" => machine, "stream" => stream, "result" => handled.label())
            .increment(1);
        handled
    }

    async fn terminate(&self, poison: Poison<'_>) -> Handled {
        tracing::warn!(
            machine = M::DEFINITION.name,
            stream = poison.stream,
            seq = poison.sequence,
            subject = %poison.message.subject,
            id = poison.id,
            delivered = poison.delivered,
            reason = %poison.reason,
            "poison message terminated"
        );
        if let Some(record) = &self.on_poison {
            record(&poison);
        }
        // Confirmed by the server, so a recorded poison message is not redelivered.
        if let Err(err) = poison.message.double_ack_with(AckKind::Term).await {
            tracing::warn!(machine = M::DEFINITION.name, stream = poison.stream, seq = poison.sequence, error = %err, "terminating a poison message failed; it may be redelivered");
        }
        Handled::Poison
    }

    /// Whether the server will not deliver a message again after its `delivered`-th
    /// delivery (the consumer's `max_deliver`, unlimited by default).
    fn last_delivery(&self, delivered: i64) -> bool {
        let max_deliver = self.consumer.cached_info().config.max_deliver;
        max_deliver > 0 && delivered >= max_deliver
    }

    async fn retry(&self, message: &Message) {
        let delay = self.options.retry_delay;
        if let Err(err) = message.ack_with(AckKind::Nak(Some(delay))).await {
            // Redelivered after ack_wait instead.
            tracing::warn!(machine = M::DEFINITION.name, error = %err, "inbox nak failed");
        }
    }
}
