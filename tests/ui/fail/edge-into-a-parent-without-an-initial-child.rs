fsm::state_machine! {
    machine Order {
        states {
            Active { Paid, Shipped }
        }
        *Created + Pay => Active,
        Paid + Ship => Shipped,
    }
}

fn main() {}
