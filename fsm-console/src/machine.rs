//! What the console reads of one machine type, behind an object so a console holds
//! several: each page's data as plain, display-ready views.

use std::collections::HashSet;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::Duration;

use fsm_core::{
    Cursor, Definition, DurableStore, EffectStatus, Error, Query, StateMachine, Trigger,
    format_duration,
};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub(crate) type Result<T> = std::result::Result<T, Error>;

/// The console's reads of one machine type.
pub(crate) trait MachinePages<S>: Send + Sync {
    fn definition(&self) -> &'static Definition;
    /// How many instances there are.
    fn total<'a>(&'a self, store: &'a S) -> BoxFuture<'a, Result<u64>>;
    /// Counts per state and which states hold an instance stuck longer than `stuck_after`.
    fn overview<'a>(
        &'a self,
        store: &'a S,
        stuck_after: Duration,
    ) -> BoxFuture<'a, Result<Overview>>;
    /// One page of instances.
    fn list<'a>(&'a self, store: &'a S, filter: &'a ListFilter) -> BoxFuture<'a, Result<List>>;
    /// One instance, whole.
    fn instance<'a>(&'a self, store: &'a S, id: &'a str) -> BoxFuture<'a, Result<Instance>>;
    /// Every dead letter.
    fn dead_letters<'a>(&'a self, store: &'a S) -> BoxFuture<'a, Result<Vec<Dead>>>;
}

/// [`MachinePages`] of machine type `M`.
pub(crate) struct Pages<M>(PhantomData<fn() -> M>);

impl<M> Pages<M> {
    pub(crate) fn new() -> Self {
        Pages(PhantomData)
    }
}

/// The machine page's data.
#[derive(Debug)]
pub(crate) struct Overview {
    /// Every state of the definition, in its order, with its count.
    pub(crate) counts: Vec<(&'static str, u64)>,
    /// Stored state names the definition does not know, with counts.
    pub(crate) unknown: Vec<(String, u64)>,
    /// States with an instance in them for longer than the threshold.
    pub(crate) stuck: HashSet<&'static str>,
}

/// What a list page asks for.
#[derive(Debug)]
pub(crate) struct ListFilter {
    pub(crate) state: Option<String>,
    pub(crate) prefix: Option<String>,
    pub(crate) after: Option<String>,
    pub(crate) limit: usize,
}

/// One list page.
#[derive(Debug)]
pub(crate) struct List {
    pub(crate) rows: Vec<Row>,
    /// Ids whose row the definition cannot read, with why.
    pub(crate) unreadable: Vec<(String, String)>,
    pub(crate) next: Option<String>,
}

/// One instance in a list.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) state: &'static str,
    pub(crate) version: u64,
    pub(crate) entered_at_ms: u64,
    pub(crate) updated_at_ms: u64,
}

/// The instance page's data.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) id: String,
    pub(crate) state: &'static str,
    pub(crate) version: u64,
    pub(crate) times: Option<Times>,
    pub(crate) context: String,
    pub(crate) history: Vec<Step>,
    pub(crate) timers: Vec<Timer>,
    pub(crate) effects: Vec<Effect>,
}

#[derive(Debug)]
pub(crate) struct Times {
    pub(crate) created_at_ms: u64,
    pub(crate) entered_at_ms: u64,
    pub(crate) updated_at_ms: u64,
}

/// One history row.
#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) version: u64,
    pub(crate) from: &'static str,
    pub(crate) event: String,
    pub(crate) payload: String,
    pub(crate) to: &'static str,
    pub(crate) key: Option<String>,
    pub(crate) at_ms: u64,
}

#[derive(Debug)]
pub(crate) struct Timer {
    pub(crate) state: String,
    pub(crate) after: String,
    pub(crate) version: u64,
    pub(crate) due_at_ms: u64,
}

#[derive(Debug)]
pub(crate) struct Effect {
    pub(crate) version: u64,
    pub(crate) seq: u32,
    pub(crate) status: &'static str,
    pub(crate) attempts: u32,
    pub(crate) last_error: Option<String>,
    pub(crate) effect: String,
}

/// One dead letter.
#[derive(Debug)]
pub(crate) struct Dead {
    pub(crate) id: String,
    pub(crate) version: u64,
    pub(crate) seq: u32,
    pub(crate) attempts: u32,
    pub(crate) last_error: Option<String>,
    pub(crate) effect: String,
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|err| format!("(not JSON: {err})"))
}

/// The raw JSON of an effect, pretty when it parses.
fn pretty_raw(raw: &str) -> String {
    serde_json::from_str::<serde_json::Value>(raw).map_or_else(|_| raw.to_owned(), |v| pretty(&v))
}

fn status(status: EffectStatus) -> &'static str {
    match status {
        EffectStatus::Pending => "pending",
        EffectStatus::Done => "done",
        EffectStatus::Dead => "dead",
    }
}

impl<S: DurableStore, M: StateMachine> MachinePages<S> for Pages<M> {
    fn definition(&self) -> &'static Definition {
        M::DEFINITION
    }

    fn total<'a>(&'a self, store: &'a S) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move { Ok(store.count_by_state::<M>().await?.total()) })
    }

    fn overview<'a>(
        &'a self,
        store: &'a S,
        stuck_after: Duration,
    ) -> BoxFuture<'a, Result<Overview>> {
        Box::pin(async move {
            let counts = store.count_by_state::<M>().await?;
            let mut stuck = HashSet::new();
            for &(state, count) in &counts.states {
                let name = M::state_name(state);
                let terminal = M::DEFINITION.state(name).is_some_and(|s| s.terminal);
                if count == 0 || terminal {
                    continue;
                }
                // The oldest instance in the state tells: one index probe per state.
                let oldest = Query::<M>::new()
                    .in_state(state)
                    .stuck_for(stuck_after)
                    .limit(1);
                if !store.list(&oldest).await?.items.is_empty() {
                    stuck.insert(name);
                }
            }
            Ok(Overview {
                counts: M::DEFINITION
                    .states
                    .iter()
                    .map(|info| {
                        let count = M::parse_state(info.name).map_or(0, |s| counts.get(s));
                        (info.name, count)
                    })
                    .collect(),
                unknown: counts.unknown.clone(),
                stuck,
            })
        })
    }

    fn list<'a>(&'a self, store: &'a S, filter: &'a ListFilter) -> BoxFuture<'a, Result<List>> {
        Box::pin(async move {
            let mut query = Query::<M>::new().limit(filter.limit);
            if let Some(name) = &filter.state {
                let state = M::DEFINITION
                    .state(name)
                    .and_then(|info| M::parse_state(info.name))
                    .ok_or_else(|| Error::InvalidQuery {
                        machine: M::DEFINITION.name,
                        detail: format!("{name:?} is not a state of {}", M::DEFINITION.name),
                    })?;
                query = query.in_state(state);
            }
            if let Some(prefix) = &filter.prefix {
                query = query.id_prefix(prefix.clone());
            }
            if let Some(after) = &filter.after {
                query = query.after(after.parse::<Cursor>().unwrap_or_else(|e| match e {}));
            }
            let page = store.list(&query).await?;
            Ok(List {
                rows: page
                    .items
                    .iter()
                    .map(|listed| Row {
                        id: listed.snapshot.id.clone(),
                        state: M::state_name(listed.snapshot.state),
                        version: listed.snapshot.version,
                        entered_at_ms: listed.entered_at_ms,
                        updated_at_ms: listed.updated_at_ms,
                    })
                    .collect(),
                unreadable: page
                    .unreadable
                    .iter()
                    .map(|u| (u.id.clone(), u.error.to_string()))
                    .collect(),
                next: page.next.map(|cursor| cursor.to_string()),
            })
        })
    }

    fn instance<'a>(&'a self, store: &'a S, id: &'a str) -> BoxFuture<'a, Result<Instance>> {
        Box::pin(async move {
            let snapshot = store.load::<M>(id).await?;
            // The instance's times are a listing's: the first id with this prefix is
            // this id itself.
            let listed = store
                .list(&Query::<M>::new().id_prefix(id).limit(1))
                .await?;
            let times = listed
                .items
                .first()
                .filter(|l| l.snapshot.id == id)
                .map(|l| Times {
                    created_at_ms: l.created_at_ms,
                    entered_at_ms: l.entered_at_ms,
                    updated_at_ms: l.updated_at_ms,
                });
            let history = store
                .history::<M>(id)
                .await?
                .into_iter()
                .map(|t| {
                    let (event, payload) = match &t.event {
                        Trigger::Event(event) => (M::event_name(event).to_owned(), pretty(event)),
                        Trigger::Timer { after } => {
                            (format!("after {}", format_duration(*after)), String::new())
                        }
                    };
                    Step {
                        version: t.version,
                        from: M::state_name(t.from),
                        event,
                        payload,
                        to: M::state_name(t.to),
                        key: t.key,
                        at_ms: t.at_ms,
                    }
                })
                .collect();
            let timers = store
                .pending_timers::<M>(id)
                .await?
                .into_iter()
                .map(|t| Timer {
                    state: t.state,
                    after: format_duration(t.after),
                    version: t.version,
                    due_at_ms: t.due_at_ms,
                })
                .collect();
            let effects = store
                .outbox::<M>(id)
                .await?
                .into_iter()
                .map(|e| Effect {
                    version: e.id.version,
                    seq: e.id.seq,
                    status: status(e.status),
                    attempts: e.attempts,
                    last_error: e.last_error,
                    effect: pretty_raw(&e.raw),
                })
                .collect();
            Ok(Instance {
                id: snapshot.id.clone(),
                state: M::state_name(snapshot.state),
                version: snapshot.version,
                times,
                context: pretty(&snapshot.context),
                history,
                timers,
                effects,
            })
        })
    }

    fn dead_letters<'a>(&'a self, store: &'a S) -> BoxFuture<'a, Result<Vec<Dead>>> {
        Box::pin(async move {
            Ok(store
                .dead_letters::<M>()
                .await?
                .into_iter()
                .map(|d| Dead {
                    id: d.id.id,
                    version: d.id.version,
                    seq: d.id.seq,
                    attempts: d.attempts,
                    last_error: d.last_error,
                    effect: pretty_raw(&d.raw),
                })
                .collect())
        })
    }
}
