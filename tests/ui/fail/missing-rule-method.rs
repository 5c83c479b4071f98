#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Room {
    quiet: bool,
}

fsm::state_machine! {
    machine Door {
        context: Room,
        *Open + Close [is_quiet] / latch => Closed,
        Closed + Open => Open,
    }
}

impl DoorRules for Room {
    fn is_quiet(&self) -> bool {
        self.quiet
    }
}

fn main() {}
