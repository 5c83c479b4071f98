fsm::state_machine! {
    machine Door {
        states {
            #[entry(beep)]
            Ajar,
        }
        *Open + Close => Closed,
        Closed + Open => Open,
    }
}

fn main() {}
