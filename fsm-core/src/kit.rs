//! What store implementations need and applications do not.
//!
//! A store persists; it does not decide. Firing a command is always the same three
//! moves, whatever the backend:
//!
//! 1. [`Prepared::new`] validates the id and key and fingerprints the event, before any
//!    I/O;
//! 2. the store reads the instance (and the transition already recorded under the key,
//!    if any) and calls [`Prepared::replay`] or [`Prepared::apply`], which run the
//!    transition rule of [`step`](crate::step);
//! 3. the store writes the result with a version-checked compare-and-set; when another
//!    writer won, the store reads and decides again, pausing with
//!    [`RetryPolicy::pause`](crate::RetryPolicy::pause) between attempts.
//!
//! The outbox rows a [`Dispatcher`](crate::Dispatcher) claims and settles through
//! [`DurableStore`](crate::DurableStore) are [`ClaimedEffect`] and [`Settlement`].
//!
//! # Examples
//!
//! ```
//! use fsm_core::kit::Prepared;
//! use fsm_core::testing::{Order, OrderData, OrderEvent, OrderState};
//! use fsm_core::{Command, Snapshot};
//!
//! let prepared = Prepared::new("o-1", Command::<Order>::new(OrderEvent::Cancel).with_key("k"))?;
//! assert_eq!(prepared.stored_key(), Some("k"));
//! let current = Snapshot::<Order>::new("o-1", OrderState::Created, 0, OrderData::default());
//! let applied = prepared.apply(&current)?;
//! assert_eq!((applied.snapshot.state, applied.snapshot.version), (OrderState::Cancelled, 1));
//! # Ok::<(), fsm_core::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

pub use crate::command::{fingerprint, fingerprint_json};
pub use crate::durable::{ClaimedEffect, Settlement};
pub use crate::machine::timer_delay;
pub use crate::query::{ListedRow, Order, Plan, timer_name};
pub use crate::store::{Applied, Prepared};
pub use crate::wakeup::{OutboxWakeup, OutboxWakeups};

// SnapshotSeal is defined below.

use crate::error::{Error, Result};
use crate::machine::StateMachine;
use crate::store::Snapshot;

/// Checks a machine id is 1..=255 bytes without a NUL byte (which PostgreSQL's text type
/// cannot hold, so no store accepts it).
///
/// # Errors
///
/// [`Error::InvalidId`].
///
/// # Examples
///
/// ```
/// use fsm_core::testing::Order;
/// assert!(fsm_core::kit::check_id::<Order>("o-1").is_ok());
/// assert!(fsm_core::kit::check_id::<Order>("").is_err());
/// ```
pub fn check_id<M: StateMachine>(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > crate::MAX_KEY_LEN || id.contains('\0') {
        return Err(Error::InvalidId {
            machine: M::DEFINITION.name,
            len: id.len(),
        });
    }
    Ok(())
}

/// Checks that `what` (`"context"`, `"event"`, `"effect"`) of instance `id` can be
/// stored as JSON and read back: every float finite, nesting no deeper than JSON readers
/// accept. Stores call it before any write, so an accepted write stays readable.
///
/// # Errors
///
/// [`Error::Serialization`] saying what is wrong and where.
///
/// # Examples
///
/// ```
/// use fsm_core::testing::Order;
/// assert!(fsm_core::kit::check_storable::<Order, _>("o-1", "context", &1.5).is_ok());
/// let err = fsm_core::kit::check_storable::<Order, _>("o-1", "context", &f64::NAN).unwrap_err();
/// assert!(err.to_string().contains("non-finite float NaN"), "{err}");
/// ```
pub fn check_storable<M: StateMachine, T: serde::Serialize + ?Sized>(
    id: &str,
    what: &'static str,
    value: &T,
) -> Result<()> {
    crate::storable::check_storable(value).map_err(|e| Error::serialization::<M>(id, what, e))
}

/// Milliseconds since the Unix epoch, now.
///
/// # Examples
///
/// ```
/// assert!(fsm_core::kit::now_ms() > 1_700_000_000_000);
/// ```
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, millis)
}

/// A duration in whole milliseconds, saturating at `u64::MAX` (so `Duration::MAX` means
/// "never", not a wrapped value in the past).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// assert_eq!(fsm_core::kit::millis(Duration::from_secs(2)), 2_000);
/// assert_eq!(fsm_core::kit::millis(Duration::MAX), u64::MAX);
/// ```
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `now + duration` in milliseconds as a database `BIGINT`, saturating at `i64::MAX`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// assert_eq!(fsm_core::kit::deadline(1_000, Duration::from_millis(500)), 1_500);
/// assert_eq!(fsm_core::kit::deadline(1_000, Duration::MAX), i64::MAX);
/// ```
pub fn deadline(now: u64, duration: Duration) -> i64 {
    i64::try_from(now.saturating_add(millis(duration))).unwrap_or(i64::MAX)
}

/// A fresh single-use token: 128 random bits from the operating system, as 32 hex digits.
///
/// # Examples
///
/// ```
/// let token = fsm_core::kit::new_token();
/// assert_eq!(token.len(), 32);
/// assert_ne!(token, fsm_core::kit::new_token());
/// ```
pub fn new_token() -> String {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    hex::encode(bytes)
}

/// A store's secret for sealing the [`Snapshot`]s it hands out, so that
/// [`Store::fire_with`](crate::Store::fire_with) can tell a snapshot it issued, unchanged,
/// from one the caller edited, built or deserialized (those are read afresh first).
///
/// The seal is a SHA-256 over a random per-store key, the machine, id, state, version
/// and the context's fingerprint; clones share the key.
///
/// # Examples
///
/// ```
/// use fsm_core::kit::SnapshotSeal;
/// use fsm_core::testing::{Order, OrderData, OrderState};
/// use fsm_core::Snapshot;
///
/// let seal = SnapshotSeal::new();
/// let mut snapshot = Snapshot::<Order>::new("o-1", OrderState::Created, 0, OrderData::default());
/// assert!(!seal.is_intact(&snapshot));
/// seal.seal(&mut snapshot);
/// assert!(seal.is_intact(&snapshot));
/// snapshot.state = OrderState::Shipped;
/// assert!(!seal.is_intact(&snapshot), "an edited snapshot is not trusted");
/// assert!(!SnapshotSeal::new().is_intact(&snapshot.clone()), "nor one of another store");
/// ```
#[derive(Clone)]
pub struct SnapshotSeal {
    key: Arc<[u8; 32]>,
}

impl SnapshotSeal {
    /// A seal with a fresh random key.
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        SnapshotSeal { key: Arc::new(key) }
    }

    fn tag<M: StateMachine>(&self, snapshot: &Snapshot<M>) -> Option<[u8; 32]> {
        let context = fingerprint(&snapshot.context).ok()?;
        let mut hasher = Sha256::new();
        hasher.update(&self.key[..]);
        for part in [
            M::DEFINITION.name,
            &snapshot.id,
            M::state_name(snapshot.state),
        ] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.update(snapshot.version.to_le_bytes());
        hasher.update(context.0);
        Some(hasher.finalize().into())
    }

    /// Seals `snapshot` as this store's, as it stands.
    pub fn seal<M: StateMachine>(&self, snapshot: &mut Snapshot<M>) {
        snapshot.seal = self.tag(snapshot);
    }

    /// Whether `snapshot` was sealed by this store and not changed since.
    pub fn is_intact<M: StateMachine>(&self, snapshot: &Snapshot<M>) -> bool {
        snapshot.seal.is_some() && snapshot.seal == self.tag(snapshot)
    }
}

impl Default for SnapshotSeal {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SnapshotSeal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SnapshotSeal { .. }")
    }
}
