fsm::state_machine! {
    machine Order {
        states {
            Active { }
        }
        *Created + Pay => Active,
    }
}

fn main() {}
