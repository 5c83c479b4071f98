#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Room {
    quiet: bool,
}

fsm::state_machine! {
    machine Door {
        context: Room,
        *Open + Close [is_quiet] => Closed,
        Closed + Open => Open,
    }
}

fn main() {}
