fsm::state_machine! {
    machine Door {
        states {
            #[on_enter(beep)]
            Closed,
        }
        *Open + Close => Closed,
        Closed + Open => Open,
    }
}

fn main() {}
