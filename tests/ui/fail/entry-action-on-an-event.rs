fsm::state_machine! {
    machine Door {
        events {
            #[entry(beep)]
            Close,
        }
        *Open + Close => Closed,
        Closed + Open => Open,
    }
}

fn main() {}
