//! The durable suite on `MemoryStore`: tokens, timers (on an advanced clock) and the
//! outbox dispatcher without a database.
#![cfg(feature = "testing")]

use fsm_core::MemoryStore;
use fsm_core::testing::{DurableFixture, EXPIRY};

/// A fresh in-memory store; its clock moves ahead instead of waiting for timers.
struct Memory(MemoryStore);

impl DurableFixture for Memory {
    type Store = MemoryStore;

    fn store(&self) -> MemoryStore {
        self.0.clone()
    }

    async fn expire_timers(&self) {
        self.0.advance_clock(EXPIRY);
    }
}

fsm_core::durable_store_tests!(async { Memory(MemoryStore::new()) });
