//! The durable suite on `MemoryStore`: tokens, timers (on an advanced clock) and the
//! outbox dispatcher without a database.
#![cfg(feature = "testing")]

use fsm_core::testing::{DurableFixture, EXPIRY};
use fsm_core::{DurableStore, MemoryStore};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pruning_100k_done_rows_in_batches_while_transitions_apply() {
    use fsm_core::kit::Settlement;
    use std::time::Duration;
    let store = MemoryStore::new();
    let aged = store.clone();
    let load =
        fsm_core::testing::durable::pruning_100k_done_rows_in_batches_while_transitions_apply(
            store,
            || async move {
                let rows = aged
                    .claim_effects("Meter", Duration::from_secs(60), 200_000)
                    .await
                    .unwrap();
                for row in &rows {
                    aged.settle_effect("Meter", row, Settlement::Done)
                        .await
                        .unwrap();
                }
                aged.advance_clock(Duration::from_secs(2 * 3600));
            },
        )
        .await;
    eprintln!("MemoryStore: {load}");
}
