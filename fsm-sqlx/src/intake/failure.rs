//! How a failed submission's error is kept: as JSON naming the [`Error`] variant and
//! its fields, read back as the same variant.

use serde::{Deserialize, Serialize};

use fsm_core::{Error, StateMachine};

/// The stored form of the errors a fire can fail with for good.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
enum Stored {
    IllegalTransition {
        state: String,
        event: String,
        repeat: bool,
    },
    GuardRejected {
        state: String,
        event: String,
        guards: Vec<String>,
    },
    KeyReused {
        key: String,
        version: u64,
    },
    InvalidKey {
        len: usize,
    },
    InvalidId {
        len: usize,
    },
    InvalidToken,
    NotFound,
    AlreadyExists {
        state: String,
        version: u64,
    },
    Corrupt {
        table: String,
        detail: String,
    },
    Serialization {
        what: String,
        message: String,
    },
    /// Anything else (an action that panicked: [`Error::WorkerDied`]).
    Other {
        worker: String,
        message: String,
    },
}

/// `name` as the `'static` string the error variants hold: one of `known`, else
/// `fallback`.
fn known(name: &str, known: &[&'static str], fallback: &'static str) -> &'static str {
    known
        .iter()
        .copied()
        .find(|k| *k == name)
        .unwrap_or(fallback)
}

/// The JSON kept for `err`.
pub(crate) fn to_json(err: &Error) -> String {
    let stored = match err {
        Error::IllegalTransition {
            state,
            event,
            repeat,
            ..
        } => Stored::IllegalTransition {
            state: state.clone(),
            event: event.clone(),
            repeat: *repeat,
        },
        Error::GuardRejected {
            state,
            event,
            guards,
            ..
        } => Stored::GuardRejected {
            state: state.clone(),
            event: event.clone(),
            guards: guards.iter().map(|g| (*g).to_owned()).collect(),
        },
        Error::KeyReused { key, version, .. } => Stored::KeyReused {
            key: key.clone(),
            version: *version,
        },
        Error::InvalidKey { len, .. } => Stored::InvalidKey { len: *len },
        Error::InvalidId { len, .. } => Stored::InvalidId { len: *len },
        Error::InvalidToken { .. } => Stored::InvalidToken,
        Error::NotFound { .. } => Stored::NotFound,
        Error::AlreadyExists { state, version, .. } => Stored::AlreadyExists {
            state: state.clone(),
            version: *version,
        },
        Error::Corrupt { table, detail, .. } => Stored::Corrupt {
            table: (*table).to_owned(),
            detail: detail.clone(),
        },
        Error::Serialization { what, source, .. } => Stored::Serialization {
            what: (*what).to_owned(),
            message: source.to_string(),
        },
        Error::WorkerDied { worker, detail, .. } => Stored::Other {
            worker: (*worker).to_owned(),
            message: detail.clone(),
        },
        other => Stored::Other {
            worker: "intake".to_owned(),
            message: other.to_string(),
        },
    };
    // Strings, numbers and booleans only: serializing cannot fail.
    serde_json::to_string(&stored).unwrap_or_default()
}

/// The error kept as `json` for instance `id` of `M`.
pub(crate) fn from_json<M: StateMachine>(id: &str, json: &str) -> Error {
    let machine = M::DEFINITION.name;
    let id = id.to_owned();
    let stored = match serde_json::from_str::<Stored>(json) {
        Ok(stored) => stored,
        Err(e) => {
            return Error::Corrupt {
                table: super::sql::TABLE,
                machine,
                id,
                detail: format!("recorded error does not decode: {e}"),
            };
        }
    };
    match stored {
        Stored::IllegalTransition {
            state,
            event,
            repeat,
        } => Error::IllegalTransition {
            machine,
            id,
            state,
            event,
            repeat,
        },
        Stored::GuardRejected {
            state,
            event,
            guards,
        } => {
            // Guard names are the definition's own `'static` strings.
            let names: Vec<&'static str> = M::DEFINITION
                .edges
                .iter()
                .filter_map(|edge| edge.guard)
                .collect();
            Error::GuardRejected {
                machine,
                id,
                state,
                event,
                guards: guards
                    .iter()
                    .map(|g| known(g, &names, "(unknown guard)"))
                    .collect(),
            }
        }
        Stored::KeyReused { key, version } => Error::KeyReused {
            machine,
            id,
            key,
            version,
        },
        Stored::InvalidKey { len } => Error::InvalidKey { machine, id, len },
        Stored::InvalidId { len } => Error::InvalidId { machine, len },
        Stored::InvalidToken => Error::InvalidToken { machine, id },
        Stored::NotFound => Error::NotFound { machine, id },
        Stored::AlreadyExists { state, version } => Error::AlreadyExists {
            machine,
            id,
            state,
            version,
        },
        Stored::Corrupt { table, detail } => Error::Corrupt {
            table: known(
                &table,
                &[
                    "fsm_machines",
                    "fsm_transitions",
                    "fsm_outbox",
                    "fsm_timers",
                    "fsm_tokens",
                    super::sql::TABLE,
                ],
                super::sql::TABLE,
            ),
            machine,
            id,
            detail,
        },
        Stored::Serialization { what, message } => Error::Serialization {
            machine,
            id,
            what: known(&what, &["context", "event", "effect"], "event"),
            source: <serde_json::Error as serde::de::Error>::custom(message),
        },
        Stored::Other { worker, message } => Error::WorkerDied {
            machine,
            worker: known(&worker, &["intake", "write"], "intake"),
            detail: message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fsm_core::testing::Order;

    #[test]
    fn a_recorded_error_reads_back_as_the_same_variant() {
        let errors = [
            Error::IllegalTransition {
                machine: "Order",
                id: "o-1".into(),
                state: "Shipped".into(),
                event: "Pay".into(),
                repeat: false,
            },
            Error::GuardRejected {
                machine: "Order",
                id: "o-1".into(),
                state: "Created".into(),
                event: "Pay".into(),
                guards: vec!["amount_matches"],
            },
            Error::NotFound {
                machine: "Order",
                id: "o-1".into(),
            },
            Error::KeyReused {
                machine: "Order",
                id: "o-1".into(),
                key: "k".into(),
                version: 3,
            },
        ];
        for err in errors {
            let back = from_json::<Order>("o-1", &to_json(&err));
            assert_eq!(back.to_string(), err.to_string());
        }
    }

    #[test]
    fn an_unreadable_recorded_error_is_corrupt() {
        let err = from_json::<Order>("o-1", "{");
        assert!(
            matches!(
                err,
                Error::Corrupt {
                    table: "fsm_intake",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
