//! Two definitions of one machine, `Parcel`, before and after a deploy, and the case
//! proving that what the first stored the second reads, fires and reports.
//!
//! v1 → v2: the state `InTransit` is renamed `Shipped` (`#[renamed_from(InTransit)]`),
//! the event `Deliver` is renamed `Arrive`, the state `Held` (with its event `Hold` and
//! its timer) is dropped, and two edges are inserted above the timer edge
//! `Shipped + after(20 min)`, so every edge index after the first moved.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::DurableFixture;
use crate::{
    Definition, DurableStore, Edge, EdgeIndex, Effects, Error, EventInfo, MachineEvent, On,
    StateInfo, StateMachine, Store, Trigger, UnknownKind, UnknownName,
};

const IN_TRANSIT_TIMER: Duration = Duration::from_secs(20 * 60);
const HELD_TIMER: Duration = Duration::from_secs(10 * 60);
const PACKED_TIMER: Duration = Duration::from_secs(25 * 60);

/// A fieldless enum of names with `as_str`, `Display` and `FromStr` accepting `former`
/// names too.
macro_rules! names {
    ($(#[$doc:meta])* $ty:ident, $kind:literal { $($variant:ident $(= $($former:literal),+)?),* $(,)? }) => {
        $(#[$doc])*
        #[allow(missing_docs)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $ty {
            $($($(#[serde(alias = $former)])+)? $variant,)*
        }

        impl $ty {
            /// The stable name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => stringify!($variant),)*
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $(stringify!($variant) $($(| $former)+)? => Ok($ty::$variant),)*
                    _ => Err(UnknownName {
                        machine: "Parcel",
                        kind: $kind,
                        name: s.to_owned(),
                    }),
                }
            }
        }
    };
}

/// Marker of the parcel machine as first deployed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParcelV1;

/// Marker of the parcel machine after the deploy that renamed, dropped and inserted.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParcelV2;

names!(
    /// States of [`ParcelV1`].
    ParcelV1State, "state" { Packed, InTransit, Delivered, Lost, Held }
);
names!(
    /// Events of [`ParcelV1`].
    ParcelV1Event, "event" { Ship, Deliver, Hold }
);
names!(
    /// States of [`ParcelV2`].
    ParcelV2State, "state" { Packed, Shipped = "InTransit", Delivered, Lost }
);
names!(
    /// Events of [`ParcelV2`].
    ParcelV2Event, "event" { Ship, Arrive = "Deliver", Reroute }
);

const fn state(
    name: &'static str,
    initial: bool,
    renamed_from: &'static [&'static str],
) -> StateInfo {
    StateInfo {
        name,
        doc: "",
        initial,
        terminal: false,
        renamed_from,
        entry: None,
        exit: None,
        parent: None,
    }
}

const fn event(name: &'static str, renamed_from: &'static [&'static str]) -> EventInfo {
    EventInfo {
        name,
        doc: "",
        payload: None,
        renamed_from,
    }
}

const fn edge(from: &'static str, on: On, to: &'static str) -> Edge {
    Edge {
        from,
        on,
        guard: None,
        action: None,
        to,
        from_wildcard: false,
        from_parent: None,
        to_parent: None,
    }
}

const V1_EDGES: &[Edge] = &[
    edge("Packed", On::Event("Ship"), "InTransit"),
    edge("Packed", On::Event("Hold"), "Held"),
    edge("InTransit", On::Event("Deliver"), "Delivered"),
    edge("InTransit", On::After(IN_TRANSIT_TIMER), "Lost"),
    edge("Held", On::After(HELD_TIMER), "Packed"),
];
const V1_TARGETS: [ParcelV1State; 5] = [
    ParcelV1State::InTransit,
    ParcelV1State::Held,
    ParcelV1State::Delivered,
    ParcelV1State::Lost,
    ParcelV1State::Packed,
];

const V2_EDGES: &[Edge] = &[
    edge("Packed", On::Event("Ship"), "Shipped"),
    edge("Shipped", On::Event("Arrive"), "Delivered"),
    edge("Shipped", On::Event("Reroute"), "Shipped"),
    edge("Packed", On::After(PACKED_TIMER), "Lost"),
    edge("Shipped", On::After(IN_TRANSIT_TIMER), "Lost"),
];
const V2_TARGETS: [ParcelV2State; 5] = [
    ParcelV2State::Shipped,
    ParcelV2State::Delivered,
    ParcelV2State::Shipped,
    ParcelV2State::Lost,
    ParcelV2State::Lost,
];

impl MachineEvent for ParcelV1Event {
    type Machine = ParcelV1;
}

impl MachineEvent for ParcelV2Event {
    type Machine = ParcelV2;
}

impl StateMachine for ParcelV1 {
    type State = ParcelV1State;
    type Event = ParcelV1Event;
    type Context = ();
    type Effect = ();

    const DEFINITION: &'static Definition = &Definition {
        name: "Parcel",
        doc: "A parcel, as first deployed.",
        context: "()",
        effect: None,
        states: &[
            state("Packed", true, &[]),
            state("InTransit", false, &[]),
            state("Delivered", false, &[]),
            state("Lost", false, &[]),
            state("Held", false, &[]),
        ],
        parents: &[],
        events: &[
            event("Ship", &[]),
            event("Deliver", &[]),
            event("Hold", &[]),
        ],
        edges: V1_EDGES,
    };
    const INITIAL: ParcelV1State = ParcelV1State::Packed;

    fn state_name(state: ParcelV1State) -> &'static str {
        state.as_str()
    }

    fn parse_state(name: &str) -> Option<ParcelV1State> {
        name.parse().ok()
    }

    fn event_name(event: &ParcelV1Event) -> &'static str {
        event.as_str()
    }

    fn edges(state: ParcelV1State, event: &ParcelV1Event) -> &'static [EdgeIndex] {
        use ParcelV1Event as E;
        use ParcelV1State as S;
        match (state, event) {
            (S::Packed, E::Ship) => &[0],
            (S::Packed, E::Hold) => &[1],
            (S::InTransit, E::Deliver) => &[2],
            _ => &[],
        }
    }

    fn timer_edges(state: ParcelV1State) -> &'static [EdgeIndex] {
        match state {
            ParcelV1State::InTransit => &[3],
            ParcelV1State::Held => &[4],
            _ => &[],
        }
    }

    fn target(edge: EdgeIndex) -> ParcelV1State {
        V1_TARGETS[usize::from(edge)]
    }

    fn guard(_: EdgeIndex, _: &(), _: Option<&ParcelV1Event>) -> bool {
        true
    }

    fn act(_: EdgeIndex, _: &mut (), _: Option<&ParcelV1Event>, _: &mut Effects<()>) {}
}

impl StateMachine for ParcelV2 {
    type State = ParcelV2State;
    type Event = ParcelV2Event;
    type Context = ();
    type Effect = ();

    const DEFINITION: &'static Definition = &Definition {
        name: "Parcel",
        doc: "A parcel, after the deploy.",
        context: "()",
        effect: None,
        states: &[
            state("Packed", true, &[]),
            state("Shipped", false, &["InTransit"]),
            state("Delivered", false, &[]),
            state("Lost", false, &[]),
        ],
        parents: &[],
        events: &[
            event("Ship", &[]),
            event("Arrive", &["Deliver"]),
            event("Reroute", &[]),
        ],
        edges: V2_EDGES,
    };
    const INITIAL: ParcelV2State = ParcelV2State::Packed;

    fn state_name(state: ParcelV2State) -> &'static str {
        state.as_str()
    }

    fn parse_state(name: &str) -> Option<ParcelV2State> {
        name.parse().ok()
    }

    fn event_name(event: &ParcelV2Event) -> &'static str {
        event.as_str()
    }

    fn edges(state: ParcelV2State, event: &ParcelV2Event) -> &'static [EdgeIndex] {
        use ParcelV2Event as E;
        use ParcelV2State as S;
        match (state, event) {
            (S::Packed, E::Ship) => &[0],
            (S::Shipped, E::Arrive) => &[1],
            (S::Shipped, E::Reroute) => &[2],
            _ => &[],
        }
    }

    fn timer_edges(state: ParcelV2State) -> &'static [EdgeIndex] {
        match state {
            ParcelV2State::Packed => &[3],
            ParcelV2State::Shipped => &[4],
            _ => &[],
        }
    }

    fn target(edge: EdgeIndex) -> ParcelV2State {
        V2_TARGETS[usize::from(edge)]
    }

    fn guard(_: EdgeIndex, _: &(), _: Option<&ParcelV2Event>) -> bool {
        true
    }

    fn act(_: EdgeIndex, _: &mut (), _: Option<&ParcelV2Event>, _: &mut Effects<()>) {}
}

/// Instances, pending timers and history written under v1 are read under v2: renamed
/// states load as their new names, renamed events read, every pending timer fires the
/// edge it was armed for (not the one now at its old index), and `verify` reports
/// exactly what v2 dropped. Nothing is deleted: the instance in the dropped state and
/// its timer are still there, still reported.
pub async fn a_changed_definition_reads_fires_and_reports_what_the_old_one_stored<
    F: DurableFixture,
>(
    h: &F,
) {
    use ParcelV1Event as E1;
    let store = h.store();
    for id in [
        "parcel-1",
        "parcel-2",
        "parcel-3",
        "parcel-done",
        "parcel-held",
        "parcel-new",
    ] {
        store.create::<ParcelV1>(id, ()).await.unwrap();
    }
    for id in ["parcel-1", "parcel-2", "parcel-3", "parcel-done"] {
        store.fire(id, crate::Command::new(E1::Ship)).await.unwrap();
    }
    store
        .fire(
            "parcel-done",
            crate::Command::new(E1::Deliver).with_key("arrived"),
        )
        .await
        .unwrap();
    store
        .fire("parcel-held", crate::Command::new(E1::Hold))
        .await
        .unwrap();
    assert!(store.verify::<ParcelV1>().await.unwrap().is_clean());

    // The deploy: the same rows, read by v2.
    let loaded = store.load::<ParcelV2>("parcel-1").await.unwrap();
    assert_eq!((loaded.state, loaded.version), (ParcelV2State::Shipped, 1));
    let history = store.history::<ParcelV2>("parcel-done").await.unwrap();
    let steps: Vec<_> = history.iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(
        steps,
        [
            (ParcelV2State::Packed, ParcelV2State::Shipped),
            (ParcelV2State::Shipped, ParcelV2State::Delivered)
        ]
    );
    assert!(matches!(
        history[1].event,
        Trigger::Event(ParcelV2Event::Arrive)
    ));
    // The key's fingerprint covers the event as sent: a retry spanning the rename sends
    // another name, so it is refused, never applied twice.
    let replay = store
        .fire(
            "parcel-done",
            crate::Command::new(ParcelV2Event::Arrive).with_key("arrived"),
        )
        .await;
    assert!(
        matches!(&replay, Err(Error::KeyReused { version: 2, .. })),
        "{replay:?}"
    );

    let counts = store.count_by_state::<ParcelV2>().await.unwrap();
    assert_eq!(counts.get(ParcelV2State::Shipped), 3);
    assert_eq!(counts.get(ParcelV2State::Delivered), 1);
    assert_eq!(counts.get(ParcelV2State::Packed), 1);
    assert_eq!(counts.unknown, [("Held".to_owned(), 1)]);
    let shipped = store
        .list(&crate::Query::<ParcelV2>::new().in_state(ParcelV2State::Shipped))
        .await
        .unwrap();
    let mut listed: Vec<_> = shipped
        .items
        .iter()
        .map(|l| l.snapshot.id.as_str())
        .collect();
    listed.sort();
    assert_eq!(listed, ["parcel-1", "parcel-2", "parcel-3"]);

    let report = store.verify::<ParcelV2>().await.unwrap();
    let found: Vec<_> = report
        .unknown
        .iter()
        .map(|u| (u.kind, u.name.as_str(), u.count, u.sample_ids.clone()))
        .collect();
    let held = vec!["parcel-held".to_owned()];
    assert_eq!(
        found,
        [
            (UnknownKind::State, "Held", 1, held.clone()),
            (UnknownKind::HistoryState, "Held", 1, held.clone()),
            (UnknownKind::Event, "Hold", 1, held.clone()),
            (UnknownKind::Timer, "Held + after(10 min)", 1, held.clone()),
        ],
        "{report}"
    );
    assert_eq!((report.instances, report.history_rows), (6, 6));

    h.expire_timers().await;
    let fired = store
        .fire_due_timers::<ParcelV2>(100, Duration::from_secs(3600))
        .await
        .unwrap();
    let mut lost: Vec<_> = fired
        .iter()
        .map(|(id, t)| {
            assert_eq!(
                (t.from, t.to),
                (ParcelV2State::Shipped, ParcelV2State::Lost)
            );
            assert!(matches!(t.event, Trigger::Timer { after } if after == IN_TRANSIT_TIMER));
            id.as_str()
        })
        .collect();
    lost.sort();
    assert_eq!(lost, ["parcel-1", "parcel-2", "parcel-3"]);

    // The dropped state: unreadable, and kept with its timer.
    let err = store.load::<ParcelV2>("parcel-held").await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    let kept = store
        .pending_timers::<ParcelV2>("parcel-held")
        .await
        .unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        (kept[0].state.as_str(), kept[0].after),
        ("Held", HELD_TIMER)
    );
    let again = store.verify::<ParcelV2>().await.unwrap();
    assert_eq!(again.of_kind(UnknownKind::State).count(), 1, "{again}");
    // v1 still reads it: a rollback of the deploy loses nothing.
    let held = store.load::<ParcelV1>("parcel-held").await.unwrap();
    assert_eq!(held.state, ParcelV1State::Held);
}
