//! Entry and exit actions compile with every generated item documented and no warning,
//! and one action method may serve a payload-free edge and a state.
#![deny(missing_docs, warnings)]

use fsm::Effects;

fsm::state_machine! {
    /// A door that beeps.
    pub machine Door {
        effect: String,
        states {
            /// Open.
            #[entry(beep)]
            #[exit(beep)]
            Open,
            /// Locked.
            #[entry(engage_bolt)]
            Locked,
        }
        *Open + Close / beep => Closed,
        Closed + Open => Open,
        Closed + Lock => Locked,
        Locked + Unlock => Closed,
    }
}

impl DoorRules for () {
    fn beep(&mut self, effects: &mut Effects<String>) {
        effects.emit("beep".into());
    }

    fn engage_bolt(&mut self, effects: &mut Effects<String>) {
        effects.emit("bolt".into());
    }
}

fn main() {
    let step = fsm::step::<Door>(DoorState::Open, &mut (), &DoorEvent::Close).unwrap();
    assert_eq!(step.effects.into_vec(), ["beep", "beep"]);
}
