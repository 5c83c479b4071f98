//! NATS JetStream for [`fsm`](https://docs.rs/fsm): effects leave through the outbox to
//! a stream, and commands arrive from one, each exactly once.
//!
//! * [`Relay`]: a [`Dispatcher`](fsm_core::Dispatcher) handler that publishes each
//!   effect to `{prefix}.{machine}.{kind}` with its [`EffectId`](fsm_core::EffectId) as
//!   `Nats-Msg-Id` (and Debezium's outbox headers), settling the outbox row only after
//!   the stream's ack. A re-publish after a crash or a lost ack falls in the stream's
//!   duplicate window and is dropped there:
//!   [`Relay::duplicate_window_needed`] says how long the window must be.
//! * [`Inbox`]: a pull consumer firing each message as a command keyed by its stream and
//!   sequence, acked after the commit; a redelivery is an
//!   [`Outcome::Duplicate`](fsm_core::Outcome::Duplicate), a poison message is
//!   terminated and recorded, a transient failure is nak'd for redelivery.
//! * [`subject`]: subject tokens and header values from names callers do not control.
//!
//! # Metrics
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `fsm_relay_published_total` | counter | machine, result | publishes: `stored`, `duplicate` (absorbed by the duplicate window), `failed` |
//! | `fsm_inbox_messages_total` | counter | machine, stream, result | inbox messages: `applied`, `duplicate`, `poison`, `retry` |
//!
//! # Examples
//!
//! ```no_run
//! use async_nats::jetstream::{self, stream};
//! use fsm_core::testing::Order;
//! use fsm_core::{DispatchOptions, Dispatcher, MemoryStore};
//! use fsm_nats::Relay;
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let jetstream = jetstream::new(async_nats::connect("nats://127.0.0.1:4222").await?);
//! let relay = Relay::<Order>::new(jetstream.clone(), "fsm.effects");
//! let options = DispatchOptions::default();
//! jetstream
//!     .get_or_create_stream(stream::Config {
//!         name: "EFFECTS".into(),
//!         subjects: vec!["fsm.effects.>".into()],
//!         duplicate_window: relay.duplicate_window_needed(&options),
//!         ..stream::Config::default()
//!     })
//!     .await?;
//! let dispatcher = Dispatcher::new(MemoryStore::new()).with_options(options);
//! dispatcher.run::<Order, _, _>(relay.handler(), CancellationToken::new()).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod inbox;
mod kind;
mod relay;
pub mod subject;

pub use inbox::{
    INBOX_MESSAGES, Inbox, InboxError, InboxOptions, InboxReport, Poison, PoisonReason,
    consumer_config,
};
pub use kind::effect_kind;
pub use relay::{RELAY_PUBLISHED, Relay, RelayError, RelayFuture, duplicate_window};
