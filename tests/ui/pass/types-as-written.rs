//! Context, effect and payload types may be any type: paths, generics, tuples, arrays.
#![deny(warnings)]

use std::collections::HashMap;

fsm::state_machine! {
    /// A counter keyed by name.
    pub machine Tally {
        context: HashMap<String, u64>,
        effect: (String, u64),
        *Counting + Add((String, u64)) / add => Counting,
        Counting + Reset(Vec<String>) / reset => Counting,
        Counting + Seal([u8; 4]) [sealable] => Sealed,
        Counting + Name(std::string::String) => Counting,
    }
}

impl TallyRules for HashMap<String, u64> {
    fn add(&mut self, payload: &(String, u64), effects: &mut fsm::Effects<(String, u64)>) {
        *self.entry(payload.0.clone()).or_default() += payload.1;
        effects.emit(payload.clone());
    }

    fn reset(&mut self, vec: &Vec<String>, _: &mut fsm::Effects<(String, u64)>) {
        for name in vec {
            self.remove(name);
        }
    }

    fn sealable(&self, payload: &[u8; 4]) -> bool {
        payload.iter().all(|b| *b != 0) && !self.is_empty()
    }
}

fn main() {
    let d = Tally::DEFINITION;
    assert_eq!(d.context, "HashMap<String, u64>");
    assert_eq!(d.effect, Some("(String, u64)"));
    assert_eq!(d.event("Add").unwrap().payload, Some("(String, u64)"));
    assert_eq!(d.event("Reset").unwrap().payload, Some("Vec<String>"));
    assert_eq!(d.event("Seal").unwrap().payload, Some("[u8; 4]"));
    assert_eq!(
        d.event("Name").unwrap().payload,
        Some("std::string::String")
    );
    let mut ctx = HashMap::new();
    let step = fsm::step::<Tally>(
        TallyState::Counting,
        &mut ctx,
        &TallyEvent::Add(("a".into(), 2)),
    )
    .unwrap();
    assert_eq!(step.effects.into_vec(), vec![("a".to_owned(), 2)]);
    let _ = TallyEvent::Reset(Vec::new());
    let _ = TallyEvent::Name(String::new());
    let _ = TallyEvent::Seal([1; 4]);
    let _ = TallyState::Sealed;
}
