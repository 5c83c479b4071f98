//! A wildcard source with a guard and an action compiles with every generated item
//! documented and no warning; explicit edges win over it.
#![deny(missing_docs, warnings)]

use fsm::Effects;

fsm::state_machine! {
    /// A door that can break from anywhere.
    pub machine Door {
        context: u32,
        effect: String,
        *Open + Close => Closed,
        Closed + Open => Open,
        Closed + Break => Closed,
        _ + Break [strong_enough] / log_break => Broken,
    }
}

impl DoorRules for u32 {
    fn strong_enough(&self) -> bool {
        *self > 10
    }

    fn log_break(&mut self, effects: &mut Effects<String>) {
        effects.emit(format!("broken by {self}"));
    }
}

fn main() {
    let step = fsm::step::<Door>(DoorState::Open, &mut 11, &DoorEvent::Break).unwrap();
    assert_eq!(step.to, DoorState::Broken);
    let step = fsm::step::<Door>(DoorState::Closed, &mut 11, &DoorEvent::Break).unwrap();
    assert_eq!(step.to, DoorState::Closed);
    assert!(fsm::step::<Door>(DoorState::Open, &mut 1, &DoorEvent::Break).is_err());
}
