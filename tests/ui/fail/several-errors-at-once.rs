fsm::state_machine! {
    machine Order {
        *Created + Pay(u64) => Paid,
        *Paid + Ship => Shipped,
        Created + Pay(i64) => Paid,
        Paid + Ship [is_ready] => Shipped,
        Lost + Find => Paid,
    }
}

fn main() {}
