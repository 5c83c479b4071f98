//! A former name must read as exactly one state (or event): not a current name, not the
//! former name of another, not the state's own name; and the attribute lists names.
fsm::state_machine! {
    machine Parcel {
        states {
            #[renamed_from(Shipped)]
            Packed,
            #[renamed_from(InTransit)]
            Shipped,
            #[renamed_from(InTransit, Delivered)]
            Delivered,
            #[renamed_from = "Old"]
            Lost,
        }
        events {
            #[renamed_from(Deliver)]
            Arrive,
        }
        *Packed + Ship => Shipped,
        Shipped + Arrive => Delivered,
        Shipped + Lose => Lost,
    }
}

fn main() {}
