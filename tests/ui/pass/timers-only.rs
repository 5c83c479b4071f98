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
    let edge = Light::timer_edges(LightState::Red)[0];
    let step = fsm::step_timer::<Light>(LightState::Red, &mut (), edge).unwrap();
    assert_eq!(step.to, LightState::Green);
    assert!(LightEventKind::ALL.is_empty());
}

use fsm::StateMachine as _;
