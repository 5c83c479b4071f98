//! Commands: an event plus, optionally, what makes a retry of it recognisable.
//!
//! An [`IdempotencyKey`] is scoped to one machine instance and is 1..=255 bytes once
//! stored. Its request is remembered by a [`Fingerprint`], the SHA-256 of the event's
//! canonical JSON (object keys sorted at every depth), so a retry is recognised even when
//! it was built by another process with a differently ordered map.
//!
//! # Examples
//!
//! ```
//! use fsm_core::IdempotencyKey;
//! use fsm_core::kit::fingerprint;
//!
//! let key = IdempotencyKey::from_source("billing", 42);
//! assert_eq!(IdempotencyKey::display_stored(&key.as_stored()), "billing#42");
//!
//! let a = fingerprint(&serde_json::json!({"amount": 5, "currency": "EUR"})).unwrap();
//! let b = fingerprint(&serde_json::json!({"currency": "EUR", "amount": 5})).unwrap();
//! assert_eq!(a, b);
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::machine::{MachineEvent, StateMachine};

/// Longest idempotency key or machine id accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// Starts every stored key that is not a client's.
const KIND_MARK: char = '\u{1f}';
const SOURCE_MARK: &str = "\u{1f}source:";

/// What identifies a request across retries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdempotencyKey {
    /// A client-chosen string, such as an HTTP `Idempotency-Key` header.
    Client(String),
    /// A message source and its sequence number (shown as `source#seq`).
    Source {
        /// The producer, e.g. a queue or an upstream service.
        source: String,
        /// The producer's sequence number.
        seq: u64,
    },
    /// A single-use token issued by the store (shown as `token:<token>`).
    Token(String),
}

impl IdempotencyKey {
    /// A client-chosen key.
    pub fn client(key: impl Into<String>) -> Self {
        IdempotencyKey::Client(key.into())
    }

    /// A `source` + `seq` pair.
    pub fn from_source(source: impl Into<String>, seq: u64) -> Self {
        IdempotencyKey::Source {
            source: source.into(),
            seq,
        }
    }

    /// The form kept in the store's key column. Client keys are kept as given (they may
    /// not contain control characters); source and token keys start with U+001F, which
    /// no client key can, so the three kinds never share a slot.
    pub fn as_stored(&self) -> Cow<'_, str> {
        match self {
            IdempotencyKey::Client(key) => Cow::Borrowed(key),
            IdempotencyKey::Source { source, seq } => {
                Cow::Owned(format!("{KIND_MARK}source:{source}#{seq}"))
            }
            IdempotencyKey::Token(token) => Cow::Owned(format!("{KIND_MARK}token:{token}")),
        }
    }

    /// The form fsm 0.1.0 stored a source or token key in (`billing#7`, `token:<T>`),
    /// which stores also look up, so a retry that spans the upgrade finds its transition.
    pub fn legacy_stored(&self) -> Option<String> {
        match self {
            IdempotencyKey::Client(_) => None,
            IdempotencyKey::Source { source, seq } => Some(format!("{source}#{seq}")),
            IdempotencyKey::Token(token) => Some(format!("token:{token}")),
        }
    }

    /// How a stored key reads in history and errors: the client's string, `billing#7`, or
    /// `token:<T>`.
    ///
    /// # Examples
    ///
    /// ```
    /// use fsm_core::IdempotencyKey;
    /// let key = IdempotencyKey::from_source("billing", 7);
    /// assert_ne!(key.as_stored(), IdempotencyKey::client("billing#7").as_stored());
    /// assert_eq!(IdempotencyKey::display_stored(&key.as_stored()), "billing#7");
    /// ```
    pub fn display_stored(stored: &str) -> &str {
        stored
            .strip_prefix(SOURCE_MARK)
            .or_else(|| stored.strip_prefix(KIND_MARK))
            .unwrap_or(stored)
    }

    /// The token, if this key is one.
    pub fn token(&self) -> Option<&str> {
        match self {
            IdempotencyKey::Token(token) => Some(token),
            _ => None,
        }
    }
}

/// An event to fire, with an optional idempotency key.
///
/// # Examples
///
/// ```
/// use fsm_core::Command;
/// use fsm_core::testing::{Order, OrderEvent, Payment};
///
/// let payment = Payment { amount_cents: 500 };
/// let pay = Command::<Order>::new(OrderEvent::Pay(payment)).with_key("req-7f3a");
/// assert_eq!(pay.key.unwrap().as_stored(), "req-7f3a");
/// ```
pub struct Command<M: StateMachine> {
    /// The event.
    pub event: M::Event,
    /// What makes a retry of this command recognisable, if anything.
    pub key: Option<IdempotencyKey>,
}

impl<M: StateMachine> Command<M> {
    /// A command without a key: retries are not recognised (but see
    /// [`Error::is_repeat`](crate::Error::is_repeat)).
    pub fn new<E>(event: E) -> Self
    where
        E: MachineEvent<Machine = M>,
        M: StateMachine<Event = E>,
    {
        Command { event, key: None }
    }

    /// Sets a client-chosen idempotency key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(IdempotencyKey::Client(key.into()));
        self
    }

    /// Sets a `source` + `seq` idempotency key.
    #[must_use]
    pub fn from_source(mut self, source: impl Into<String>, seq: u64) -> Self {
        self.key = Some(IdempotencyKey::from_source(source, seq));
        self
    }

    /// Carries a single-use token issued by the store; firing consumes it.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.key = Some(IdempotencyKey::Token(token.into()));
        self
    }
}

impl<M: StateMachine> Clone for Command<M> {
    fn clone(&self) -> Self {
        Command {
            event: self.event.clone(),
            key: self.key.clone(),
        }
    }
}

impl<M: StateMachine> fmt::Debug for Command<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("event", &self.event)
            .field("key", &self.key)
            .finish()
    }
}

/// SHA-256 of a request's canonical JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads a fingerprint back from stored bytes; `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Fingerprint)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// SHA-256 of `value`'s canonical JSON: object keys sorted at every depth, no spaces.
///
/// # Errors
///
/// Whatever `serde_json` reports for a value that cannot be represented as JSON (a map
/// with non-string keys, a failing `Serialize` impl).
pub fn fingerprint<T: Serialize + ?Sized>(value: &T) -> Result<Fingerprint, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    Ok(fingerprint_json(&value))
}

/// [`fingerprint`] of an already-built JSON value.
pub fn fingerprint_json(value: &serde_json::Value) -> Fingerprint {
    let mut hasher = Sha256::new();
    write_canonical(value, &mut hasher);
    Fingerprint(hasher.finalize().into())
}

/// Feeds bytes written by serde_json straight into the hasher.
struct Hashing<'a>(&'a mut Sha256);

impl std::io::Write for Hashing<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Checks the order rather than trusting serde_json's map type, which the
// `preserve_order` feature (enabled by any crate in the build) would change.
fn write_canonical(value: &serde_json::Value, out: &mut Sha256) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            out.update(b"{");
            if map.keys().is_sorted() {
                write_entries(map.iter(), out);
            } else {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                write_entries(entries.into_iter(), out);
            }
            out.update(b"}");
        }
        Value::Array(items) => {
            out.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.update(b",");
                }
                write_canonical(item, out);
            }
            out.update(b"]");
        }
        // Strings (escaped) and numbers as serde_json prints them; writing to a hasher
        // cannot fail.
        scalar => {
            let _ = serde_json::to_writer(Hashing(out), scalar);
        }
    }
}

fn write_entries<'v>(
    entries: impl Iterator<Item = (&'v String, &'v serde_json::Value)>,
    out: &mut Sha256,
) {
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            out.update(b",");
        }
        let _ = serde_json::to_writer(Hashing(out), key);
        out.update(b":");
        write_canonical(value, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    #[test]
    fn fingerprint_ignores_map_order_at_every_depth() {
        let a = json!({"b": {"y": 1, "x": [1, {"q": 1, "p": 2}]}, "a": null});
        let b = json!({"a": null, "b": {"x": [1, {"p": 2, "q": 1}], "y": 1}});
        assert_eq!(fingerprint_json(&a), fingerprint_json(&b));
    }

    #[test]
    fn fingerprint_of_hash_maps_is_stable_across_instances() {
        let one: HashMap<String, u32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
        let two: HashMap<String, u32> = (0..50).rev().map(|i| (format!("k{i}"), i)).collect();
        assert_eq!(fingerprint(&one).unwrap(), fingerprint(&two).unwrap());
    }

    #[test]
    fn fingerprint_tells_payloads_apart() {
        assert_ne!(
            fingerprint(&json!({"Pay": {"amount": 5}})).unwrap(),
            fingerprint(&json!({"Pay": {"amount": 6}})).unwrap()
        );
        assert_ne!(
            fingerprint(&json!("1")).unwrap(),
            fingerprint(&json!(1)).unwrap()
        );
    }

    #[test]
    fn fingerprint_is_sha256_of_canonical_json() {
        let expected = Sha256::digest(br#"{"a":1,"b":"x"}"#);
        assert_eq!(
            fingerprint(&json!({"b": "x", "a": 1})).unwrap().0,
            <[u8; 32]>::from(expected)
        );
    }

    #[test]
    fn keys_have_one_stored_form_each_and_kinds_never_collide() {
        let client = IdempotencyKey::client("abc");
        let source = IdempotencyKey::from_source("q", 7);
        let token = IdempotencyKey::Token("t1".into());
        assert_eq!(client.as_stored(), "abc");
        assert_eq!(source.as_stored(), "\u{1f}source:q#7");
        assert_eq!(token.as_stored(), "\u{1f}token:t1");
        for (key, shown) in [(&client, "abc"), (&source, "q#7"), (&token, "token:t1")] {
            assert_eq!(IdempotencyKey::display_stored(&key.as_stored()), shown);
            // A client spelling the shown form gets a slot of its own.
            assert!(key == &client || IdempotencyKey::client(shown).as_stored() != key.as_stored());
        }
        assert_eq!(source.legacy_stored().as_deref(), Some("q#7"));
        assert_eq!(token.legacy_stored().as_deref(), Some("token:t1"));
        assert_eq!(client.legacy_stored(), None);
    }
}
