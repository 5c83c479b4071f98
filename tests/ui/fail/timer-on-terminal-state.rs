fsm::state_machine! {
    machine Door {
        states {
            #[terminal]
            Closed,
        }
        *Open + Close => Closed,
        Closed + after(5 min) => Open,
    }
}

fn main() {}
