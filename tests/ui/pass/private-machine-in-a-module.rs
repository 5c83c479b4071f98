//! A crate-private machine in a module: no warning, and user names never clash with
//! the generated code's locals.
#![deny(warnings)]

mod door {
    #[allow(non_upper_case_globals, dead_code)]
    const payload: u8 = 0;
    #[allow(non_upper_case_globals, dead_code)]
    const context: u8 = 0;

    fsm::state_machine! {
        pub(crate) machine Door {
            context: super::Lock,
            *Open + Close [is_free] => Closed,
            Closed + Open(u32) [code_matches] / count => Open,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Lock {
    code: u32,
    opened: u32,
}

impl door::DoorRules for Lock {
    fn is_free(&self) -> bool {
        true
    }

    fn code_matches(&self, code: &u32) -> bool {
        *code == self.code
    }

    fn count(&mut self, _: &u32, _: &mut fsm::Effects<()>) {
        self.opened += 1;
    }
}

fn main() {
    use door::{Door, DoorEvent, DoorState};
    let mut lock = Lock { code: 7, opened: 0 };
    let closed = fsm::step::<Door>(DoorState::Open, &mut lock, &DoorEvent::Close)
        .unwrap()
        .to;
    let open = fsm::step::<Door>(closed, &mut lock, &DoorEvent::Open(7))
        .unwrap()
        .to;
    assert_eq!((open, lock.opened), (DoorState::Open, 1));
    let _ = Door;
}
