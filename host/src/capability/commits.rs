//! Commit signals: which component just committed a write, for the triggers that run
//! right after one (`run_on_commit`, e.g. an outbox relay). SQLite and PostgreSQL both
//! report here, so a relay is woken the same way whichever database its service uses,
//! as long as the committing component runs in this host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

#[derive(Default)]
pub struct CommitSignals {
    /// Committing component → the wake-ups of those listening to it.
    listeners: Mutex<HashMap<Arc<str>, Vec<Arc<Notify>>>>,
}

impl CommitSignals {
    /// Notifies `wake` (coalesced: one pending wake-up at most) after each commit of a
    /// write by `committer`.
    pub fn watch(&self, committer: &str, wake: Arc<Notify>) {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(committer.into())
            .or_default()
            .push(wake);
    }

    /// `committer` has committed a write.
    pub fn committed(&self, committer: &str) {
        let listeners = self.listeners.lock().unwrap_or_else(PoisonError::into_inner);
        for wake in listeners.get(committer).into_iter().flatten() {
            wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_watched_committer_wakes_a_listener() {
        let signals = CommitSignals::default();
        let relay = Arc::new(Notify::new());
        signals.watch("orders", relay.clone());
        signals.committed("orders-events");
        let woken = relay.notified();
        tokio::pin!(woken);
        assert!(!woken.as_mut().enable(), "a commit by another component woke the relay");
        signals.committed("orders");
        assert!(woken.enable(), "the watched component's commit did not wake the relay");
    }
}
