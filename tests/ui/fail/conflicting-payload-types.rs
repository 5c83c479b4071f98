fsm::state_machine! {
    machine Account {
        *Open + Deposit(u64) => Open,
        Open + Close => Closed,
        Closed + Deposit(i64) => Open,
    }
}

fn main() {}
