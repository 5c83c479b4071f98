fsm::state_machine! {
    machine Order {
        contxt: u32,
        *Created + Pay(u64) => Paid,
        Paid + Ship =>,
        Paid + after(2 weeks) => Created,
        Paid + Refund [is_late && is_unshipped] => Created,
        Created + Pay(i64) => Paid,
    }
}

fn main() {}
