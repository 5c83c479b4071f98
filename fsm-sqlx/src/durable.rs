//! Tokens, timers and the outbox of [`SqlStore`]: fsm-core's [`DurableStore`] contract,
//! written once for every dialect.

use std::time::Duration;

use fsm_core::kit::{
    ClaimedEffect, OutboxWakeup, Settlement, check_id, deadline, new_token, now_ms,
};
use fsm_core::{
    ArmedTimer, DeadLetter, DurableStore, EffectId, Error, OutboxDepth, OutboxEntry, PruneReport,
    Result, Retention, StateMachine, Transition,
};

use crate::dialect::{Arg, Dialect, claimed_effect, decodable, execute, fetch, retrying};
use crate::engine;
use crate::store::{SqlStore, detached};

impl<D: Dialect> DurableStore for SqlStore<D> {
    async fn issue_token<M: StateMachine>(&self, id: &str, ttl: Duration) -> Result<String> {
        check_id::<M>(id)?;
        let machine = M::DEFINITION.name;
        let token = new_token();
        let expires_at = deadline(now_ms(), ttl);
        let args = [
            Arg::Text(machine),
            Arg::Text(id),
            Arg::Text(&token),
            Arg::Int(expires_at),
            Arg::Text(machine),
            Arg::Text(id),
        ];
        let issued = execute(&self.pool, D::SQL.issue_token, &args, || {
            format!("issue token for {machine} {id}")
        })
        .await?;
        if issued == 1 {
            Ok(token)
        } else {
            Err(Error::not_found::<M>(id))
        }
    }

    async fn fire_due_timers<M: StateMachine>(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<(String, Transition<M>)>> {
        let store = self.clone();
        detached(async move { store.fire_due_timers_now::<M>(limit, lease).await }).await
    }

    async fn dead_letters<M: StateMachine>(&self) -> Result<Vec<DeadLetter<M::Effect>>> {
        let machine = M::DEFINITION.name;
        let rows = fetch(
            &self.pool,
            D::SQL.dead_effects,
            &[Arg::Text(machine)],
            || format!("read {machine} dead letters"),
        )
        .await?;
        rows.iter()
            .filter_map(|row| decodable(claimed_effect::<D>(machine, row)))
            .map(|row| Ok(DeadLetter::of(machine, row)))
            .collect()
    }

    async fn requeue(&self, id: &EffectId) -> Result<bool> {
        let args = [
            Arg::Int(now_ms() as i64),
            Arg::Text(id.machine),
            Arg::Text(&id.id),
            Arg::Int(i64::try_from(id.version).unwrap_or(i64::MAX)),
            Arg::Small(i32::try_from(id.seq).unwrap_or(i32::MAX)),
        ];
        let requeued = execute(&self.pool, D::SQL.requeue, &args, || {
            format!("requeue {} {} effect", id.machine, id.id)
        })
        .await?;
        if requeued == 1 {
            self.effects_committed(id.machine);
        }
        Ok(requeued == 1)
    }

    fn outbox_wakeup(&self, machine: &'static str) -> Option<OutboxWakeup> {
        Some(self.watch_outbox(machine))
    }

    async fn claim_effects(
        &self,
        machine: &'static str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedEffect>> {
        let store = self.clone();
        detached(async move { store.claim_effects_now(machine, lease, limit).await }).await
    }

    async fn settle_effect(
        &self,
        machine: &'static str,
        effect: &ClaimedEffect,
        settlement: Settlement<'_>,
    ) -> Result<bool> {
        let row = [
            Arg::Text(machine),
            Arg::Text(&effect.machine_id),
            Arg::Int(i64::try_from(effect.version).unwrap_or(i64::MAX)),
            Arg::Small(i32::try_from(effect.seq).unwrap_or(i32::MAX)),
            // The claim's lease token: a worker whose lease expired and was claimed again
            // settles nothing.
            Arg::Int(i64::try_from(effect.claim).unwrap_or(i64::MAX)),
        ];
        let now = now_ms();
        let (sql, head) = match settlement {
            Settlement::Done => (D::SQL.effect_done, vec![Arg::Int(now as i64)]),
            Settlement::Retry { delay, error } => (
                D::SQL.effect_retry,
                vec![Arg::Int(deadline(now, delay)), Arg::Text(error)],
            ),
            Settlement::Dead { error } => (D::SQL.effect_dead, vec![Arg::Text(error)]),
            Settlement::Release => (D::SQL.effect_release, vec![]),
        };
        let args: Vec<Arg<'_>> = head.into_iter().chain(row).collect();
        let settled = execute(&self.pool, sql, &args, || {
            format!("settle {machine} {} effect", effect.machine_id)
        })
        .await?;
        Ok(settled == 1)
    }

    async fn settle_done(&self, machine: &'static str, effects: &[ClaimedEffect]) -> Result<usize> {
        let now = now_ms() as i64;
        let mut settled = 0;
        let mut rest = effects;
        while !rest.is_empty() {
            // Power-of-two chunks: a handful of statement texts for the statement cache.
            let size = DONE_CHUNKS
                .iter()
                .copied()
                .rev()
                .find(|&size| size <= rest.len())
                .unwrap_or(1);
            let (chunk, tail) = rest.split_at(size);
            rest = tail;
            let mut args = vec![Arg::Int(now)];
            for effect in chunk {
                args.extend([
                    Arg::Text(machine),
                    Arg::Text(&effect.machine_id),
                    Arg::Int(i64::try_from(effect.version).unwrap_or(i64::MAX)),
                    Arg::Small(i32::try_from(effect.seq).unwrap_or(i32::MAX)),
                    // A worker whose lease expired and was claimed again settles nothing.
                    Arg::Int(i64::try_from(effect.claim).unwrap_or(i64::MAX)),
                ]);
            }
            let rows = execute(&self.pool, done_sql::<D>(size), &args, || {
                format!("settle {size} {machine} effects")
            })
            .await?;
            settled += usize::try_from(rows).unwrap_or(usize::MAX);
        }
        Ok(settled)
    }

    async fn discard(&self, id: &EffectId) -> Result<bool> {
        let args = [
            Arg::Text(id.machine),
            Arg::Text(&id.id),
            Arg::Int(i64::try_from(id.version).unwrap_or(i64::MAX)),
            Arg::Small(i32::try_from(id.seq).unwrap_or(i32::MAX)),
        ];
        let discarded = execute(&self.pool, D::SQL.discard, &args, || {
            format!("discard {} {} effect", id.machine, id.id)
        })
        .await?;
        if discarded == 1 {
            tracing::info!(effect = %id, "dead letter discarded");
        }
        Ok(discarded == 1)
    }

    async fn prune(&self, retention: &Retention) -> Result<PruneReport> {
        let (pool, retention) = (self.pool.clone(), *retention);
        detached(async move { engine::prune::prune::<D>(&pool, &retention).await }).await
    }

    async fn prune_finished<M: StateMachine>(
        &self,
        older_than: Duration,
        batch: usize,
    ) -> Result<u64> {
        retrying(|| engine::prune::prune_finished::<D, M>(&self.pool, older_than, batch)).await
    }

    async fn outbox_depth(&self, machine: &'static str) -> Result<OutboxDepth> {
        engine::queries::outbox_depth::<D>(&self.pool, machine).await
    }

    async fn pending_timers<M: StateMachine>(&self, id: &str) -> Result<Vec<ArmedTimer>> {
        check_id::<M>(id)?;
        engine::queries::pending_timers::<D, M>(&self.pool, id).await
    }

    async fn outbox<M: StateMachine>(&self, id: &str) -> Result<Vec<OutboxEntry<M::Effect>>> {
        check_id::<M>(id)?;
        engine::queries::outbox::<D, M>(&self.pool, id).await
    }
}

/// The bodies of the transactional [`DurableStore`] methods, which run
/// [`detached`]: a caller who drops one does not cut its transaction off.
impl<D: Dialect> SqlStore<D> {
    async fn fire_due_timers_now<M: StateMachine>(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<(String, Transition<M>)>> {
        let now = now_ms();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let due = retrying(|| {
            D::claim_timers(
                &self.pool,
                M::DEFINITION.name,
                now as i64,
                deadline(now, lease),
                limit,
            )
        })
        .await?;
        let mut fired = Vec::new();
        for timer in &due {
            match engine::fire_timer::<D, M>(&self.pool, timer).await {
                Ok(Some(transition)) => {
                    let late =
                        u64::try_from((now as i64).saturating_sub(timer.due_at)).unwrap_or(0);
                    fsm_core::observe::timer_fired(M::DEFINITION.name, Duration::from_millis(late));
                    fired.push((timer.machine_id.clone(), transition));
                    // Its edge's action may have emitted effects.
                    self.effects_committed(M::DEFINITION.name);
                }
                Ok(None) => {}
                // One bad row never stops the batch: it stays leased, and is reported
                // again when its lease expires.
                Err(err @ Error::Corrupt { .. }) => {
                    tracing::error!(error = %err, "timer skipped: its row is corrupt");
                }
                Err(err) => return Err(err),
            }
        }
        Ok(fired)
    }
    async fn claim_effects_now(
        &self,
        machine: &'static str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedEffect>> {
        let now = now_ms();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut effects = retrying(|| {
            D::claim_effects(&self.pool, machine, now as i64, deadline(now, lease), limit)
        })
        .await?;
        // RETURNING has no order: hand each instance's effects over in emission order.
        effects.sort_by(|a, b| {
            (&a.machine_id, a.version, a.seq).cmp(&(&b.machine_id, b.version, b.seq))
        });
        Ok(effects)
    }
}

/// The row counts one statement of [`DurableStore::settle_done`] marks done.
const DONE_CHUNKS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// `UPDATE ... SET done_at` for `rows` rows at once, each matched on its whole key and
/// lease token: an `OR` of conjunctions, each of which every dialect answers from the
/// primary key (with the machine type outside the `OR`, SQLite scanned every row of
/// the machine type).
/// Built once per dialect and size and kept for the process, as the statement cache
/// needs a `'static` text.
fn done_sql<D: Dialect>(rows: usize) -> &'static str {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, PoisonError};

    static BUILT: OnceLock<Mutex<HashMap<(&'static str, usize), &'static str>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    built
        .entry((<D as sqlx::Database>::NAME, rows))
        .or_insert_with(|| {
            let p = |n: usize| D::placeholder(n);
            let matches: Vec<String> = (0..rows)
                .map(|row| {
                    let at = 2 + row * 5;
                    format!(
                        "(machine_type = {} AND machine_id = {} AND version = {} AND seq = {} AND claims = {})",
                        p(at),
                        p(at + 1),
                        p(at + 2),
                        p(at + 3),
                        p(at + 4)
                    )
                })
                .collect();
            let sql = format!(
                "UPDATE fsm_outbox SET done_at = {}, lease_until = NULL WHERE {}",
                p(1),
                matches.join(" OR ")
            );
            Box::leak(sql.into_boxed_str())
        })
}
