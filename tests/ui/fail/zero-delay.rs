fsm::state_machine! {
    machine Door {
        *Open + Close => Closed,
        Closed + Open => Open,
        Open + after(0 s) => Closed,
    }
}

fn main() {}
