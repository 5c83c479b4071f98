fsm::state_machine! {
    machine Door {
        *Open + Close => Closed,
        Closed + Open => Open,
        _ | Open + Break => Broken,
        _ + after(1 h) => Broken,
    }
}

fn main() {}
