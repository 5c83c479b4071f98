//! Instances that lost a compare-and-set race lately. An adaptive fire on one of them
//! starts with the row lock instead of racing first: on a hot row nearly every
//! optimistic attempt loses, and each lost one costs the database a read and a write.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long an instance stays hot after its last lost race.
const HOT_FOR: Duration = Duration::from_secs(1);

/// Instances remembered at most; beyond, the cold ones are forgotten (or, if all are
/// hot, every one: the next lost race marks them again).
const MAX_HOT: usize = 4096;

/// Lost races by machine type and id, shared by a store's clones.
#[derive(Debug, Default)]
pub(crate) struct HotRows {
    /// Whether any instance is remembered: a store with no contention never locks.
    any: AtomicBool,
    recent: Mutex<HashMap<&'static str, HashMap<String, Instant>>>,
}

impl HotRows {
    /// Whether `id` of `machine` lost a race less than [`HOT_FOR`] ago.
    pub(crate) fn is_hot(&self, machine: &'static str, id: &str) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .get(machine)
            .and_then(|ids| ids.get(id))
            .is_some_and(|at| at.elapsed() < HOT_FOR)
    }

    /// Records that a fire on `id` of `machine` lost a race now.
    pub(crate) fn lost_race(&self, machine: &'static str, id: &str) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let ids = recent.entry(machine).or_default();
        if ids.len() >= MAX_HOT && !ids.contains_key(id) {
            ids.retain(|_, at| at.elapsed() < HOT_FOR);
            if ids.len() >= MAX_HOT {
                ids.clear();
            }
        }
        ids.insert(id.to_owned(), Instant::now());
        self.any.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_is_hot_after_a_lost_race_and_others_are_not() {
        let hot = HotRows::default();
        assert!(!hot.is_hot("Order", "o-1"));
        hot.lost_race("Order", "o-1");
        assert!(hot.is_hot("Order", "o-1"));
        assert!(!hot.is_hot("Order", "o-2"));
        assert!(!hot.is_hot("Invoice", "o-1"));
    }

    #[test]
    fn the_memory_is_bounded() {
        let hot = HotRows::default();
        for n in 0..MAX_HOT + 10 {
            hot.lost_race("Order", &n.to_string());
        }
        let recent = hot.recent.lock().unwrap();
        assert!(recent["Order"].len() <= MAX_HOT);
    }
}
