fsm::state_machine! {
    machine Door {
        *Open + Close => Closed,
        Closed + Open => Open,
        Open + Slam => Closed,
        _ + Slam => Closed,
    }
}

fn main() {}
