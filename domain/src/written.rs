//! The events one connection wrote, remembered until its writer publishes them right
//! after the commit ([`crate::outbox::publish_written`]).
//!
//! Events written while handling a delivered message (inside
//! [`crate::inbox::handle_once`]) are not outbox rows: they are kept with that
//! message's inbox row, written with them at the end of the same transaction.
//! Publishing them then needs no read and no delete (a commit of its own), and a redelivery of the
//! message publishes them again from there ([`crate::outbox::republish`]), which covers
//! a crash between the commit and the publish. Other events (a cron handler's) go to
//! `outbox_own` as before, where the relay finds what a crash left.

use std::cell::{Cell, RefCell};

use crate::outbox::OutboxRow;

/// Where a written event waits until it is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// With the inbox row of the message being handled.
    Inbox,
    /// In `outbox_own`, for the relay should its writer not publish it.
    OwnOutbox,
}

#[derive(Default, Debug)]
pub struct Written {
    rows: RefCell<Vec<(OutboxRow, Place)>>,
    /// Whether the open transaction handles a delivered event.
    handling: Cell<bool>,
    /// How many rows there were when the open transaction began.
    begun_at: Cell<usize>,
}

impl Written {
    pub(crate) fn begin(&self) {
        self.begun_at.set(self.rows.borrow().len());
        self.handling.set(false);
    }

    /// The open transaction handles a delivered event.
    pub(crate) fn handling(&self) {
        self.handling.set(true);
    }

    pub(crate) fn is_handling(&self) -> bool {
        self.handling.get()
    }

    pub(crate) fn push(&self, row: OutboxRow, place: Place) {
        self.rows.borrow_mut().push((row, place));
    }

    /// The rows the open transaction keeps with its inbox row.
    pub(crate) fn for_inbox(&self) -> Vec<OutboxRow> {
        self.rows.borrow()[self.begun_at.get()..]
            .iter()
            .filter(|(_, place)| *place == Place::Inbox)
            .map(|(row, _)| row.clone())
            .collect()
    }

    pub(crate) fn committed(&self) {
        self.handling.set(false);
    }

    /// Forgets what the open transaction wrote: it was never committed.
    pub(crate) fn rolled_back(&self) {
        self.rows.borrow_mut().truncate(self.begun_at.get());
        self.handling.set(false);
    }

    /// Every row written since the last call, in order.
    pub(crate) fn take(&self) -> Vec<(OutboxRow, Place)> {
        self.begun_at.set(0);
        self.rows.take()
    }
}
