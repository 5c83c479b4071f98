fsm::state_machine! {
    machine Door {
        *Open + Close => Closed,
        Closed + Open => Open,
        Open + after(3 weeks) => Closed,
    }
}

fn main() {}
