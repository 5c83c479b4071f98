fsm::state_machine! {
    machine Order {
        states {
            Active { *Paid, Shipped }
        }
        *Created + Pay => Active,
        Paid + Ship => Shipped,
        Active + after(30 d) => Archived,
    }
}

fn main() {}
