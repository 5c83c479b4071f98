fsm::state_machine! {
    machine Door {
        *Open + Close => Closed,
        Closed + Open => Open,
        _ + Break => Broken,
        _ + Break => Scrapped,
    }
}

fn main() {}
