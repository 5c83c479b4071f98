fsm::state_machine! {
    machine Door {
        states {
            #[entry(beep)]
            #[entry(blink)]
            Closed,
        }
        *Open + Close => Closed,
        Closed + Open => Open,
    }
}

fn main() {}
