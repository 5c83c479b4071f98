fsm::state_machine! {
    machine Door {
        *Open + Close => Closed,
        Open + Close => Locked,
        Closed + Open => Open,
        Locked + Unlock => Closed,
    }
}

fn main() {}
