#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Room {
    quiet: bool,
}

fsm::state_machine! {
    machine Door {
        context: Room,
        *Open + Close(u8) [is_quiet] => Closed,
        Closed + Open => Open,
    }
}

impl DoorRules for Room {
    fn is_quiet(&self) -> bool {
        self.quiet
    }
}

fn main() {}
