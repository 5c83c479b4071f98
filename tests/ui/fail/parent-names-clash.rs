fsm::state_machine! {
    machine Order {
        states {
            Active { *Paid, Shipped }
            Active { Packed }
            Done { *Delivered, Archive { *Done { *Old } } }
            Archive,
        }
        *Created + Pay => Active,
        Paid + Ship => Shipped,
        Paid + Pack => Packed,
        Shipped + Deliver => Done,
        Delivered + Store => Old,
    }
}

fn main() {}
