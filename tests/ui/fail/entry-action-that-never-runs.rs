fsm::state_machine! {
    machine Door {
        states {
            #[exit(unlock)]
            Locked,
            #[entry(greet)]
            Open,
        }
        *Open + Close => Closed,
        Open + Knock => Open,
        Closed + Lock => Locked,
    }
}

fn main() {}
