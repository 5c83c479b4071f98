fsm::state_machine! {
    machine Order {
        states {
            *Created,
            #[terminal]
            #[renamed_from(Busy)]
            Active { *Paid, Shipped }
        }
        *Created + Pay => Active,
        Paid + Ship => Shipped,
    }
}

fn main() {}
