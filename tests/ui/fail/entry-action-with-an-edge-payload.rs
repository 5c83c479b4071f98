fsm::state_machine! {
    machine Door {
        states {
            #[entry(log_visit)]
            Open,
        }
        *Closed + Open(String) / log_visit => Open,
        Open + Close => Closed,
    }
}

fn main() {}
