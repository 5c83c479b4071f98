fsm::state_machine! {
    machine Door {
        *Open + Close => Closed,
        Open + Close [is_quiet] => Closed,
        Closed + Open => Open,
    }
}

fn main() {}
