fsm::state_machine! {
    machine Door {
        Open | *Closed + Knock => Open,
        Open + Close => Closed,
    }
}

fn main() {}
