fsm::state_machine! {
    machine Door {
        *Open + Close => Closed,
        *Closed + Open => Open,
    }
}

fn main() {}
