//! The store conformance suite on `MemoryStore`.

use std::sync::Arc;

use fsm_core::MemoryStore;

fsm_core::store_conformance_tests!(async { Arc::new(MemoryStore::new()) });
