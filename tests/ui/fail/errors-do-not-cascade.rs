fsm::state_machine! {
    machine Door {
        Open + Close => Closed,
        Closed + Open => Open,
    }
}

fn main() {
    // The enums and the marker type still exist, so only the machine's own error shows.
    let state: DoorState = "Open".parse().unwrap();
    assert_eq!(state, DoorState::Open);
    let _ = DoorEvent::Close.kind();
    let _ = <Door as fsm::StateMachine>::INITIAL;
}
