fsm::state_machine! {
    machine Order {
        states {
            #[entry(open_case)]
            #[exit(close_case)]
            Active { *Paid, Shipped }
        }
        *Created + Pay => Active,
        Paid + Ship => Shipped,
        Shipped + Return => Paid,
    }
}

fn main() {}
