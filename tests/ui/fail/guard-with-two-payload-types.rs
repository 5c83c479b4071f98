fsm::state_machine! {
    machine Account {
        context: u64,
        *Open + Deposit(u64) [is_allowed] => Open,
        Open + Close(String) [is_allowed] => Closed,
    }
}

fn main() {}
