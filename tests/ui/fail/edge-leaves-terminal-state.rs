fsm::state_machine! {
    machine Door {
        states {
            #[terminal]
            Closed,
        }
        *Open + Close => Closed,
        Closed + Open => Open,
    }
}

fn main() {}
