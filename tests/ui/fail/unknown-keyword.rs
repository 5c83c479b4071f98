fsm::state_machine! {
    machine Door {
        contxt: u32,
        *Open + Close => Closed,
        Closed + Open => Open,
    }
}

fn main() {}
