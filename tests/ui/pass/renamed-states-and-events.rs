//! Former names read as the states and events they became, through `FromStr`, serde and
//! the definition, while the current names are what is written.
#![deny(warnings)]

fsm::state_machine! {
    machine Parcel {
        states {
            Packed,
            /// Handed to the carrier.
            #[renamed_from(InTransit, OnTheWay)]
            Shipped,
            Delivered,
        }
        events {
            #[renamed_from(Deliver)]
            Arrive,
        }
        *Packed + Ship => Shipped,
        Shipped + Arrive => Delivered,
    }
}

fn main() {
    use fsm::StateMachine;
    assert_eq!("InTransit".parse::<ParcelState>().unwrap(), ParcelState::Shipped);
    assert_eq!(Parcel::parse_state("OnTheWay"), Some(ParcelState::Shipped));
    assert_eq!(ParcelState::Shipped.as_str(), "Shipped");
    assert_eq!("Deliver".parse::<ParcelEventKind>().unwrap(), ParcelEventKind::Arrive);
    let event: ParcelEvent = serde_json::from_str("\"Deliver\"").unwrap();
    assert!(matches!(event, ParcelEvent::Arrive));
    let state: ParcelState = serde_json::from_str("\"InTransit\"").unwrap();
    assert_eq!(serde_json::to_string(&state).unwrap(), "\"Shipped\"");
    let shipped = Parcel::DEFINITION.state("InTransit").unwrap();
    assert_eq!((shipped.name, shipped.renamed_from), ("Shipped", &["InTransit", "OnTheWay"][..]));
    assert_eq!(Parcel::DEFINITION.event("Deliver").unwrap().name, "Arrive");
}
