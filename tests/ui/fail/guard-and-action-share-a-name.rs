fsm::state_machine! {
    machine Door {
        context: u32,
        *Open + Close [check] => Closed,
        Closed + Open / check => Open,
    }
}

fn main() {}
