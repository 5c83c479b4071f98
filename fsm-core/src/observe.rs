//! What the engine reports: a [`tracing`] span per store operation and [`metrics`]
//! counters, histograms and gauges, through the facades only. Nothing is exported
//! unless the application installs a subscriber and a recorder (the HTTP example
//! serves Prometheus text at `/metrics`); without them each call costs a few atomic
//! loads.
//!
//! # Spans
//!
//! | span | fields |
//! | --- | --- |
//! | `fsm.fire` | machine, id, event, key (a token shown as `token:…`), outcome, from, to, version, attempts |
//! | `fsm.create`, `fsm.load`, `fsm.history` | machine, id |
//! | `fsm.list`, `fsm.count_by_state`, `fsm.verify` | machine |
//! | `fsm.fire_due_timers` | machine, fired |
//! | `fsm.dispatch` | machine, claimed, done, retried, dead |
//!
//! # Metrics
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `fsm_transitions_total` | counter | machine, event, outcome | every fire: `applied`, `duplicate`, `illegal`, `guard_rejected`, `key_reused`, `conflict`, `not_found`, `invalid` (id, key, token, value), `error` (backend) |
//! | `fsm_fire_duration_seconds` | histogram | machine | a fire, start to outcome |
//! | `fsm_cas_retries_total` | counter | machine | compare-and-set writes lost to another writer and retried |
//! | `fsm_timers_fired_total` | counter | machine | timer transitions applied |
//! | `fsm_timer_lag_seconds` | histogram | machine | how late a timer fired (firing time − due time) |
//! | `fsm_effects_dispatched_total` | counter | machine, result | settled effects: `done`, `retry`, `dead` |
//! | `fsm_effect_age_seconds` | histogram | machine | at dispatch, time since the effect became due (its emission, or the end of its retry backoff) |
//! | `fsm_outbox_pending`, `fsm_outbox_dead` | gauge | machine | outbox rows waiting, and dead letters, as a [`Dispatcher`](crate::Dispatcher) last counted them |
//! | `fsm_group_commit_size` | histogram | machine | commands per batch of a store with group commit (`fsm_sqlx::GroupCommit`; a fire that found its queue idle runs alone and is not counted) |
//! | `fsm_pruned_total` | counter | kind | rows a [`Pruner`](crate::Pruner) deleted: `done_effects`, `expired_tokens`, `finished_instances` |
//!
//! Labels never hold ids or keys (unbounded); spans do.

use std::future::Future;
use std::time::{Duration, Instant};

use tracing::Instrument;
use tracing::field::Empty;

use crate::command::IdempotencyKey;
use crate::error::{Error, Result};
use crate::machine::StateMachine;
use crate::store::Outcome;

/// `fsm_transitions_total`.
pub const TRANSITIONS: &str = "fsm_transitions_total";
/// `fsm_fire_duration_seconds`.
pub const FIRE_DURATION: &str = "fsm_fire_duration_seconds";
/// `fsm_cas_retries_total`.
pub const CAS_RETRIES: &str = "fsm_cas_retries_total";
/// `fsm_timers_fired_total`.
pub const TIMERS_FIRED: &str = "fsm_timers_fired_total";
/// `fsm_timer_lag_seconds`.
pub const TIMER_LAG: &str = "fsm_timer_lag_seconds";
/// `fsm_effects_dispatched_total`.
pub const EFFECTS_DISPATCHED: &str = "fsm_effects_dispatched_total";
/// `fsm_effect_age_seconds`.
pub const EFFECT_AGE: &str = "fsm_effect_age_seconds";
/// `fsm_outbox_pending`.
pub const OUTBOX_PENDING: &str = "fsm_outbox_pending";
/// `fsm_outbox_dead`.
pub const OUTBOX_DEAD: &str = "fsm_outbox_dead";
/// `fsm_pruned_total`.
pub const PRUNED: &str = "fsm_pruned_total";
/// Histogram: commands per group-commit batch.
pub const GROUP_COMMIT_SIZE: &str = "fsm_group_commit_size";

/// The `outcome` label and span field of a fire's result.
pub fn outcome_label<M: StateMachine>(result: &Result<Outcome<M>>) -> &'static str {
    match result {
        Ok(Outcome::Applied(_)) => "applied",
        Ok(Outcome::Duplicate(_)) => "duplicate",
        Err(Error::IllegalTransition { .. }) => "illegal",
        Err(Error::GuardRejected { .. }) => "guard_rejected",
        Err(Error::KeyReused { .. }) => "key_reused",
        Err(Error::Conflict { .. }) => "conflict",
        Err(Error::NotFound { .. }) => "not_found",
        Err(
            Error::InvalidId { .. }
            | Error::InvalidKey { .. }
            | Error::InvalidToken { .. }
            | Error::Serialization { .. },
        ) => "invalid",
        Err(_) => "error",
    }
}

/// The key as a span shows it: a client key as given, a source key as `source#seq`, a
/// token never (it is a credential until consumed).
fn shown_key(key: &IdempotencyKey) -> String {
    match key.token() {
        Some(_) => "token:…".to_owned(),
        None => IdempotencyKey::display_stored(&key.as_stored()).to_owned(),
    }
}

/// The span `fsm.fire` for firing `event` (its name) with `key` at instance `id`; the key
/// is formatted only if the span is enabled.
pub fn fire_span<M: StateMachine>(
    id: &str,
    event: &'static str,
    key: Option<&IdempotencyKey>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "fsm.fire",
        machine = M::DEFINITION.name,
        id,
        event,
        key = Empty,
        outcome = Empty,
        from = Empty,
        to = Empty,
        version = Empty,
        attempts = 1,
    );
    if let Some(key) = key
        && !span.is_disabled()
    {
        span.record("key", shown_key(key));
    }
    span
}

/// Runs a store's fire inside `span` (from [`fire_span`]) and records its outcome,
/// latency and transition counter. Stores call it around everything `fire` does,
/// validation included, so a refused command is counted too.
pub async fn fire<M, F>(span: tracing::Span, event: &'static str, fire: F) -> Result<Outcome<M>>
where
    M: StateMachine,
    F: Future<Output = Result<Outcome<M>>>,
{
    let machine = M::DEFINITION.name;
    let start = Instant::now();
    let result = fire.instrument(span.clone()).await;
    let outcome = outcome_label(&result);
    if !span.is_disabled() {
        span.record("outcome", outcome);
        if let Ok(done) = &result {
            let t = done.transition();
            span.record("from", M::state_name(t.from));
            span.record("to", M::state_name(t.to));
            span.record("version", t.version);
        }
    }
    metrics::counter!(TRANSITIONS, "machine" => machine, "event" => event, "outcome" => outcome)
        .increment(1);
    metrics::histogram!(FIRE_DURATION, "machine" => machine).record(start.elapsed());
    result
}

/// Records that attempt `attempt` of a fire is about to run after losing a
/// compare-and-set (on the current `fsm.fire` span and in `fsm_cas_retries_total`).
pub fn cas_retry(machine: &'static str, attempt: u32) {
    tracing::Span::current().record("attempts", attempt);
    metrics::counter!(CAS_RETRIES, "machine" => machine).increment(1);
}

/// Records a group-commit batch of `commands` commands.
pub fn group_commit(machine: &'static str, commands: usize) {
    metrics::histogram!(GROUP_COMMIT_SIZE, "machine" => machine).record(commands as f64);
}

/// Records a timer transition that applied `lag` after it was due.
pub fn timer_fired(machine: &'static str, lag: Duration) {
    metrics::counter!(TIMERS_FIRED, "machine" => machine).increment(1);
    metrics::histogram!(TIMER_LAG, "machine" => machine).record(lag);
}

/// Records a settled effect: `result` is `done`, `retry` or `dead`.
pub fn effect_settled(machine: &'static str, result: &'static str) {
    metrics::counter!(EFFECTS_DISPATCHED, "machine" => machine, "result" => result).increment(1);
}

/// Records how long a claimed effect waited since it became due.
pub fn effect_claimed(machine: &'static str, age: Duration) {
    metrics::histogram!(EFFECT_AGE, "machine" => machine).record(age);
}

/// Records the outbox depth of a machine type.
pub fn outbox_depth(machine: &'static str, pending: u64, dead: u64) {
    metrics::gauge!(OUTBOX_PENDING, "machine" => machine).set(pending as f64);
    metrics::gauge!(OUTBOX_DEAD, "machine" => machine).set(dead as f64);
}

/// Records what a prune deleted.
pub fn pruned(report: &crate::PruneReport) {
    for (kind, n) in [
        ("done_effects", report.done_effects),
        ("expired_tokens", report.expired_tokens),
        ("finished_instances", report.finished_instances),
    ] {
        if n > 0 {
            metrics::counter!(PRUNED, "kind" => kind).increment(n);
        }
    }
}

/// A span for a store operation on one instance (`fsm.create`, `fsm.load`,
/// `fsm.history`).
pub fn instance_span(name: &'static str, machine: &'static str, id: &str) -> tracing::Span {
    match name {
        "fsm.create" => tracing::info_span!("fsm.create", machine, id),
        "fsm.load" => tracing::debug_span!("fsm.load", machine, id),
        _ => tracing::debug_span!("fsm.history", machine, id),
    }
}

/// A span for a store operation over a machine type (`fsm.list`, `fsm.count_by_state`,
/// `fsm.verify`).
pub fn machine_span(name: &'static str, machine: &'static str) -> tracing::Span {
    match name {
        "fsm.list" => tracing::debug_span!("fsm.list", machine),
        "fsm.count_by_state" => tracing::debug_span!("fsm.count_by_state", machine),
        _ => tracing::info_span!("fsm.verify", machine),
    }
}
