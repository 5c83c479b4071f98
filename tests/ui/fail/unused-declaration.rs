fsm::state_machine! {
    machine Door {
        states {
            /// Nobody goes here.
            Ajar,
        }
        events {
            Slam,
        }
        *Open + Close => Closed,
        Closed + Open => Open,
    }
}

fn main() {}
