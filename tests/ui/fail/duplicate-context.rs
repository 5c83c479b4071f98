fsm::state_machine! {
    machine Door {
        context: u32,
        context: u64,
        *Open + Close => Closed,
        Closed + Open => Open,
    }
}

fn main() {}
