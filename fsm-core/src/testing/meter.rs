//! [`Meter`]: a second hand-written machine, for what the order cannot carry: floats,
//! arbitrary JSON, an action that panics, and an action that emits many effects.
//!
//! ```text
//! *Reading + Record(Sample) / record => Reading
//!  Reading + Burst(u32) / burst => Reading
//! ```
//!
//! `record` counts the sample, keeps `1 / value` (so a sample of 0 leaves an infinite
//! float in the context) and the sample's detail, and panics after changing the context
//! when the value is negative. `burst` emits that many effects.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{
    Definition, Edge, EdgeIndex, Effects, EventInfo, MachineEvent, On, StateInfo, StateMachine,
    UnknownName,
};

/// Marker of the meter machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct Meter;

/// The one state of [`Meter`].
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MeterState {
    Reading,
}

/// Events of [`Meter`].
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MeterEvent {
    Record(Sample),
    Burst(u32),
}

/// Payload of [`MeterEvent::Record`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Sample {
    /// The reading.
    pub value: f64,
    /// Anything the sensor adds.
    pub detail: Option<serde_json::Value>,
}

/// Context of [`Meter`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MeterData {
    /// Samples recorded.
    pub samples: u32,
    /// `1 / value` of the last sample.
    pub last_inverse: Option<f64>,
    /// The last sample's detail.
    pub detail: Option<serde_json::Value>,
}

/// Effects of [`Meter`].
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeterEffect {
    Tick(u32),
}

impl fmt::Display for MeterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reading")
    }
}

impl FromStr for MeterState {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s {
            "Reading" => Ok(MeterState::Reading),
            _ => Err(UnknownName {
                machine: "Meter",
                kind: "state",
                name: s.to_owned(),
            }),
        }
    }
}

impl MachineEvent for MeterEvent {
    type Machine = Meter;
}

impl StateMachine for Meter {
    type State = MeterState;
    type Event = MeterEvent;
    type Context = MeterData;
    type Effect = MeterEffect;

    const DEFINITION: &'static Definition = &Definition {
        name: "Meter",
        doc: "The conformance suite's meter.",
        context: "MeterData",
        effect: Some("MeterEffect"),
        states: &[StateInfo {
            name: "Reading",
            doc: "",
            initial: true,
            terminal: false,
            renamed_from: &[],
            entry: None,
            exit: None,
            parent: None,
        }],
        parents: &[],
        events: &[
            EventInfo {
                name: "Record",
                doc: "",
                payload: Some("Sample"),
                renamed_from: &[],
            },
            EventInfo {
                name: "Burst",
                doc: "",
                payload: Some("u32"),
                renamed_from: &[],
            },
        ],
        edges: &[
            Edge {
                from: "Reading",
                on: On::Event("Record"),
                guard: None,
                action: Some("record"),
                to: "Reading",
                from_wildcard: false,
                from_parent: None,
                to_parent: None,
            },
            Edge {
                from: "Reading",
                on: On::Event("Burst"),
                guard: None,
                action: Some("burst"),
                to: "Reading",
                from_wildcard: false,
                from_parent: None,
                to_parent: None,
            },
        ],
    };
    const INITIAL: MeterState = MeterState::Reading;

    fn state_name(_: MeterState) -> &'static str {
        "Reading"
    }

    fn parse_state(name: &str) -> Option<MeterState> {
        name.parse().ok()
    }

    fn event_name(event: &MeterEvent) -> &'static str {
        match event {
            MeterEvent::Record(_) => "Record",
            MeterEvent::Burst(_) => "Burst",
        }
    }

    fn edges(_: MeterState, event: &MeterEvent) -> &'static [EdgeIndex] {
        match event {
            MeterEvent::Record(_) => &[0],
            MeterEvent::Burst(_) => &[1],
        }
    }

    fn timer_edges(_: MeterState) -> &'static [EdgeIndex] {
        &[]
    }

    fn target(_: EdgeIndex) -> MeterState {
        MeterState::Reading
    }

    fn guard(_: EdgeIndex, _: &MeterData, _: Option<&MeterEvent>) -> bool {
        true
    }

    fn act(
        _: EdgeIndex,
        context: &mut MeterData,
        event: Option<&MeterEvent>,
        effects: &mut Effects<MeterEffect>,
    ) {
        match event {
            Some(MeterEvent::Record(sample)) => {
                context.samples += 1;
                context.last_inverse = Some(1.0 / sample.value);
                context.detail = sample.detail.clone();
                assert!(
                    sample.value >= 0.0,
                    "a negative reading: the sensor is broken"
                );
            }
            Some(MeterEvent::Burst(n)) => (0..*n).for_each(|i| effects.emit(MeterEffect::Tick(i))),
            None => {}
        }
    }
}

/// A JSON value nested `depth` arrays deep.
pub fn nested(depth: usize) -> serde_json::Value {
    (0..depth).fold(serde_json::Value::Null, |inner, _| {
        serde_json::Value::Array(vec![inner])
    })
}
