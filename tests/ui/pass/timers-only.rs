//! A machine driven only by timers has an empty event enum, and still compiles.
#![deny(warnings)]

fsm::state_machine! {
    /// A traffic light.
    pub machine Light {
        *Red + after(30 s) => Green,
        Green + after(25 s) => Amber,
        Amber + after(5 s) => Red,
    }
}

fn main() {
    let step = fsm::step_timer::<Light>(LightState::Red, &mut (), Duration::from_secs(30)).unwrap();
    assert_eq!(step.to, LightState::Green);
    assert!(LightEventKind::ALL.is_empty());
}

use std::time::Duration;
