//! The order aggregate and its saga, as pure functions: an order is the fold of its
//! recorded events, and `decide` says which events an incoming one adds (results it
//! records, commands it issues, the order's conclusion).
//!
//! OrderPlaced → reserve stock → (reserved → authorize payment | rejected → cancel)
//! → (authorized → commit stock + capture payment → confirm | declined → release,
//! cancel). A customer cancel or a step's timeout before capture compensates
//! (release what is held; a late reservation is released and a late authorization
//! voided when it arrives); a timed-out completion re-issues its commands.

use shop_domain::ShopEvent;
use shop_domain::events::{InventoryCommand, OrderConcluded, PaymentCommand};
use shop_domain::types::{Money, OrderLine, OrderStatus};

/// What the order waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Inventory,
    Payment,
    Completion,
    Done,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Inventory => "inventory",
            Step::Payment => "payment",
            Step::Completion => "completion",
            Step::Done => "done",
        }
    }
}

/// One entry of an order's history.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub seq: i64,
    pub event_id: String,
    /// Seconds since the epoch, and the same as RFC 3339.
    pub at: i64,
    pub time: String,
    pub event: ShopEvent,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub status: OrderStatus,
    pub step: Step,
    /// When the current step began (seconds), for its timeout.
    pub step_since: i64,
    pub reason: Option<String>,
    pub payment_id: Option<String>,
    reserved: bool,
    release_requested: bool,
    /// Asked for, whatever came of it (the answer can be lost with a dead letter).
    authorization_requested: bool,
    void_requested: bool,
    committed: bool,
    captured: bool,
    /// The last recorded sequence number (the optimistic-concurrency version).
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// How long each step may wait.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub inventory_secs: i64,
    pub payment_secs: i64,
    pub completion_secs: i64,
}

impl Order {
    /// The order as `history` leaves it; `None` before its OrderPlaced.
    pub fn fold(history: &[Recorded]) -> Option<Order> {
        let (first, rest) = history.split_first()?;
        let ShopEvent::OrderPlaced(placed) = &first.event else {
            return None;
        };
        let mut order = Order {
            id: placed.order_id.clone(),
            user_id: placed.user_id.clone(),
            lines: placed.lines.clone(),
            total: placed.total.clone(),
            status: OrderStatus::Pending,
            step: Step::Inventory,
            step_since: first.at,
            reason: None,
            payment_id: None,
            reserved: false,
            release_requested: false,
            authorization_requested: false,
            void_requested: false,
            committed: false,
            captured: false,
            version: first.seq,
            created_at: first.time.clone(),
            updated_at: first.time.clone(),
        };
        for recorded in rest {
            order.apply(recorded);
        }
        Some(order)
    }

    /// The order once `recorded` (appended after its history) is applied.
    pub fn then(mut self, recorded: &[Recorded]) -> Order {
        for r in recorded {
            self.apply(r);
        }
        self
    }

    fn enter(&mut self, step: Step, at: i64) {
        self.step = step;
        self.step_since = at;
    }

    fn apply(&mut self, recorded: &Recorded) {
        let at = recorded.at;
        let pending = self.status == OrderStatus::Pending;
        match &recorded.event {
            ShopEvent::InventoryReserved(_) => {
                self.reserved = true;
                if pending && self.step == Step::Inventory {
                    self.enter(Step::Payment, at);
                }
            }
            ShopEvent::PaymentAuthorized(result) => {
                self.payment_id = result.payment_id.clone();
                if pending && self.step == Step::Payment {
                    self.enter(Step::Completion, at);
                }
            }
            ShopEvent::InventoryCommitted(_) => self.committed = true,
            ShopEvent::PaymentCaptured(_) => self.captured = true,
            ShopEvent::InventoryReleaseRequested(_) => self.release_requested = true,
            ShopEvent::PaymentAuthorizeRequested(_) => self.authorization_requested = true,
            ShopEvent::PaymentVoidRequested(_) | ShopEvent::PaymentRefundRequested(_) => self.void_requested = true,
            ShopEvent::OrderTimedOut(_) if pending && self.step == Step::Completion => self.step_since = at,
            ShopEvent::OrderConfirmed(_) => {
                self.status = OrderStatus::Confirmed;
                self.enter(Step::Done, at);
            }
            ShopEvent::OrderCancelled(concluded) => {
                self.status = OrderStatus::Cancelled;
                self.reason = concluded.reason.clone();
                self.enter(Step::Done, at);
            }
            _ => {}
        }
        self.version = recorded.seq;
        self.updated_at = recorded.time.clone();
    }

    /// When the current step times out (pending orders only).
    pub fn deadline(&self, timeouts: &Timeouts) -> Option<i64> {
        let wait = match (self.status, self.step) {
            (OrderStatus::Pending, Step::Inventory) => timeouts.inventory_secs,
            (OrderStatus::Pending, Step::Payment) => timeouts.payment_secs,
            (OrderStatus::Pending, Step::Completion) => timeouts.completion_secs,
            _ => return None,
        };
        Some(self.step_since + wait)
    }

    /// Whether the customer may still cancel (nothing captured yet).
    pub fn cancellable(&self) -> bool {
        self.status == OrderStatus::Pending && matches!(self.step, Step::Inventory | Step::Payment)
    }

    fn inventory_command(&self) -> InventoryCommand {
        InventoryCommand {
            order_id: self.id.clone(),
            lines: self.lines.clone(),
        }
    }

    fn payment_command(&self) -> PaymentCommand {
        PaymentCommand {
            order_id: self.id.clone(),
            amount: self.total.clone(),
            user_id: Some(self.user_id.clone()),
        }
    }

    fn concluded(&self, reason: Option<String>) -> OrderConcluded {
        OrderConcluded {
            order_id: self.id.clone(),
            user_id: self.user_id.clone(),
            total: self.total.clone(),
            reason,
        }
    }

    /// Gives back what a cancelled order holds, and cancels it.
    fn cancel(&self, reason: String) -> Vec<ShopEvent> {
        let mut events = Vec::new();
        if self.reserved && !self.release_requested {
            events.push(ShopEvent::InventoryReleaseRequested(self.inventory_command()));
        }
        // Any authorization asked for may have happened, even if its answer never
        // came back: payments voids it, or records that there is none.
        if (self.authorization_requested || self.payment_id.is_some()) && !self.void_requested {
            events.push(ShopEvent::PaymentVoidRequested(self.payment_command()));
        }
        events.push(ShopEvent::OrderCancelled(self.concluded(Some(reason))));
        events
    }
}

/// The events `incoming` adds to `order`'s history, itself first; none when it
/// changes nothing (a stale or repeated result, a cancel that comes too late).
pub fn decide(order: &Order, incoming: &ShopEvent) -> Vec<ShopEvent> {
    let pending = order.status == OrderStatus::Pending;
    let cancelled = order.status == OrderStatus::Cancelled;
    let step = order.step;
    let then = |more: Vec<ShopEvent>| [vec![incoming.clone()], more].concat();
    match incoming {
        ShopEvent::InventoryReserved(_) if pending && step == Step::Inventory => {
            then(vec![ShopEvent::PaymentAuthorizeRequested(order.payment_command())])
        }
        // Reserved after the order was cancelled: give it back.
        ShopEvent::InventoryReserved(_) if cancelled && !order.release_requested => {
            then(vec![ShopEvent::InventoryReleaseRequested(order.inventory_command())])
        }
        ShopEvent::InventoryRejected(result) if pending && step == Step::Inventory => {
            let reason = match result.shortages.is_empty() {
                true => result.reason.clone().unwrap_or_else(|| "stock refused".into()),
                false => format!("out of stock: {}", result.shortages.join(", ")),
            };
            then(vec![ShopEvent::OrderCancelled(order.concluded(Some(reason)))])
        }
        // The commit failed (the reservation expired): undo the payment.
        ShopEvent::InventoryRejected(result) if pending && step == Step::Completion => {
            let mut reserved_gone = order.clone();
            reserved_gone.reserved = false;
            let reason = result
                .reason
                .clone()
                .unwrap_or_else(|| "stock could not be committed".into());
            then(reserved_gone.cancel(reason))
        }
        ShopEvent::PaymentAuthorized(_) if pending && step == Step::Payment => then(vec![
            ShopEvent::InventoryCommitRequested(order.inventory_command()),
            ShopEvent::PaymentCaptureRequested(order.payment_command()),
        ]),
        // Authorized after the order was cancelled: void it.
        ShopEvent::PaymentAuthorized(_) if cancelled && !order.void_requested => {
            then(vec![ShopEvent::PaymentVoidRequested(order.payment_command())])
        }
        // Declined: at authorization, or (the provider refusing the capture) while
        // completing, when the stock may already be committed: give it all back.
        ShopEvent::PaymentDeclined(result) if pending && matches!(step, Step::Payment | Step::Completion) => {
            let reason = format!(
                "payment declined: {}",
                result.reason.as_deref().unwrap_or("no reason given")
            );
            // A declined authorization holds nothing to void; a refused capture does.
            let mut answered = order.clone();
            answered.authorization_requested = false;
            then(answered.cancel(reason))
        }
        ShopEvent::InventoryCommitted(_) | ShopEvent::PaymentCaptured(_) if pending && step == Step::Completion => {
            let committed = order.committed || matches!(incoming, ShopEvent::InventoryCommitted(_));
            let captured = order.captured || matches!(incoming, ShopEvent::PaymentCaptured(_));
            if committed && captured {
                then(vec![ShopEvent::OrderConfirmed(order.concluded(None))])
            } else {
                then(vec![])
            }
        }
        ShopEvent::OrderCancelRequested(_) if order.cancellable() => {
            then(order.cancel("cancelled by the customer".into()))
        }
        ShopEvent::OrderTimedOut(timeout) if pending && timeout.step == step.name() => match step {
            Step::Inventory | Step::Payment => then(order.cancel(format!("timed out waiting for {}", step.name()))),
            // Payment is authorized: finish rather than cancel, asking again.
            _ => {
                let mut again = Vec::new();
                if !order.committed {
                    again.push(ShopEvent::InventoryCommitRequested(order.inventory_command()));
                }
                if !order.captured {
                    again.push(ShopEvent::PaymentCaptureRequested(order.payment_command()));
                }
                then(again)
            }
        },
        // Compensations completing, and results for a concluded order: history only.
        ShopEvent::InventoryReleased(_)
        | ShopEvent::PaymentVoided(_)
        | ShopEvent::PaymentRefunded(_)
        | ShopEvent::PaymentCaptured(_)
        | ShopEvent::InventoryCommitted(_) => then(vec![]),
        _ => vec![],
    }
}

/// Whether a recorded event also leaves through the outbox: the commands this saga
/// issues and the order's own milestones (results came from elsewhere; cancel
/// requests and timeouts are internal).
pub fn publishes(event: &ShopEvent) -> bool {
    matches!(
        event,
        ShopEvent::OrderPlaced(_)
            | ShopEvent::OrderConfirmed(_)
            | ShopEvent::OrderCancelled(_)
            | ShopEvent::InventoryReserveRequested(_)
            | ShopEvent::InventoryReleaseRequested(_)
            | ShopEvent::InventoryCommitRequested(_)
            | ShopEvent::PaymentAuthorizeRequested(_)
            | ShopEvent::PaymentCaptureRequested(_)
            | ShopEvent::PaymentVoidRequested(_)
            | ShopEvent::PaymentRefundRequested(_)
    )
}

#[cfg(test)]
mod tests {
    use shop_domain::events::{InventoryResult, OrderCancelRequested, OrderPlaced, OrderTimedOut, PaymentResult};

    use super::*;

    /// An order's history, grown the way the store grows it.
    struct History(Vec<Recorded>);

    impl History {
        fn placed() -> Self {
            let placed = ShopEvent::OrderPlaced(OrderPlaced {
                order_id: "o-1".into(),
                user_id: "u-1".into(),
                lines: vec![OrderLine {
                    product_id: "p-1".into(),
                    sku: "MUG".into(),
                    quantity: 2,
                    unit_price: Money {
                        amount: 500,
                        currency: "EUR".into(),
                    },
                }],
                total: Money {
                    amount: 1000,
                    currency: "EUR".into(),
                },
            });
            let mut history = History(vec![]);
            history.record(vec![placed], 100);
            history
        }

        fn order(&self) -> Order {
            Order::fold(&self.0).unwrap()
        }

        fn record(&mut self, events: Vec<ShopEvent>, at: i64) {
            for event in events {
                let seq = self.0.len() as i64 + 1;
                self.0.push(Recorded {
                    seq,
                    event_id: format!("e{seq}"),
                    at,
                    time: format!("t{at}"),
                    event,
                });
            }
        }

        /// Delivers `incoming`; the types of what it added after itself.
        fn deliver(&mut self, incoming: ShopEvent, at: i64) -> Vec<&'static str> {
            let added = decide(&self.order(), &incoming);
            let types = added.iter().skip(1).map(ShopEvent::event_type).collect();
            self.record(added, at);
            types
        }
    }

    fn inventory(reason: Option<&str>, shortages: &[&str]) -> InventoryResult {
        InventoryResult {
            order_id: "o-1".into(),
            reason: reason.map(Into::into),
            shortages: shortages.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn payment(reason: Option<&str>) -> PaymentResult {
        PaymentResult {
            order_id: "o-1".into(),
            payment_id: Some("pay-1".into()),
            amount: Money {
                amount: 1000,
                currency: "EUR".into(),
            },
            reason: reason.map(Into::into),
        }
    }

    fn cancel_request() -> ShopEvent {
        ShopEvent::OrderCancelRequested(OrderCancelRequested {
            order_id: "o-1".into(),
            user_id: "u-1".into(),
        })
    }

    fn timed_out(step: &str) -> ShopEvent {
        ShopEvent::OrderTimedOut(OrderTimedOut {
            order_id: "o-1".into(),
            step: step.into(),
        })
    }

    const TIMEOUTS: Timeouts = Timeouts {
        inventory_secs: 10,
        payment_secs: 20,
        completion_secs: 30,
    };

    #[test]
    fn the_happy_path_reserves_authorizes_commits_captures_and_confirms() {
        let mut h = History::placed();
        assert_eq!(h.order().deadline(&TIMEOUTS), Some(110));
        let reserved = ShopEvent::InventoryReserved(inventory(None, &[]));
        assert_eq!(h.deliver(reserved.clone(), 101), ["shop.payment.authorize_requested"]);
        assert_eq!(
            h.deliver(reserved, 102),
            Vec::<&str>::new(),
            "a repeated result adds nothing"
        );
        assert_eq!(h.order().deadline(&TIMEOUTS), Some(121));
        assert_eq!(
            h.deliver(ShopEvent::PaymentAuthorized(payment(None)), 103),
            ["shop.inventory.commit_requested", "shop.payment.capture_requested"]
        );
        assert!(!h.order().cancellable(), "no cancelling once capture is asked for");
        assert_eq!(
            h.deliver(ShopEvent::PaymentCaptured(payment(None)), 104),
            Vec::<&str>::new()
        );
        assert_eq!(h.order().status, OrderStatus::Pending);
        assert_eq!(
            h.deliver(ShopEvent::InventoryCommitted(inventory(None, &[])), 105),
            ["shop.order.confirmed"]
        );
        let order = h.order();
        assert_eq!(
            (order.status, order.step, order.version),
            (OrderStatus::Confirmed, Step::Done, 9)
        );
        assert_eq!(order.deadline(&TIMEOUTS), None);
        assert!(decide(&order, &cancel_request()).is_empty());
    }

    #[test]
    fn out_of_stock_cancels_without_payment() {
        let mut h = History::placed();
        let rejected = ShopEvent::InventoryRejected(inventory(Some("out of stock"), &["MUG"]));
        assert_eq!(h.deliver(rejected, 101), ["shop.order.cancelled"]);
        let order = h.order();
        assert_eq!(order.status, OrderStatus::Cancelled);
        assert_eq!(order.reason.as_deref(), Some("out of stock: MUG"));
    }

    #[test]
    fn a_declined_payment_releases_the_stock() {
        let mut h = History::placed();
        h.deliver(ShopEvent::InventoryReserved(inventory(None, &[])), 101);
        assert_eq!(
            h.deliver(ShopEvent::PaymentDeclined(payment(Some("card declined"))), 102),
            ["shop.inventory.release_requested", "shop.order.cancelled"]
        );
        assert_eq!(h.order().reason.as_deref(), Some("payment declined: card declined"));
    }

    #[test]
    fn a_cancel_while_waiting_for_payment_releases_now_and_voids_a_late_authorization() {
        let mut h = History::placed();
        h.deliver(ShopEvent::InventoryReserved(inventory(None, &[])), 101);
        assert_eq!(
            h.deliver(cancel_request(), 102),
            [
                "shop.inventory.release_requested",
                "shop.payment.void_requested",
                "shop.order.cancelled"
            ],
            "the authorization asked for is voided, whether or not its answer ever comes"
        );
        assert_eq!(
            h.deliver(ShopEvent::PaymentAuthorized(payment(None)), 103),
            Vec::<&str>::new(),
            "the void follows the authorization on the order's partition"
        );
        assert_eq!(
            h.deliver(ShopEvent::PaymentVoided(payment(None)), 105),
            Vec::<&str>::new()
        );
        assert_eq!(h.order().status, OrderStatus::Cancelled);
    }

    #[test]
    fn a_cancel_before_the_reservation_releases_it_when_it_arrives() {
        let mut h = History::placed();
        assert_eq!(h.deliver(cancel_request(), 101), ["shop.order.cancelled"]);
        assert_eq!(
            h.deliver(ShopEvent::InventoryReserved(inventory(None, &[])), 102),
            ["shop.inventory.release_requested"]
        );
        assert_eq!(
            h.deliver(ShopEvent::InventoryReserved(inventory(None, &[])), 103),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn timeouts_compensate_while_waiting_and_retry_while_completing() {
        let mut h = History::placed();
        assert!(
            h.deliver(timed_out("payment"), 120).is_empty(),
            "a timeout for another step"
        );
        h.deliver(ShopEvent::InventoryReserved(inventory(None, &[])), 101);
        assert_eq!(
            h.deliver(timed_out("payment"), 121),
            [
                "shop.inventory.release_requested",
                "shop.payment.void_requested",
                "shop.order.cancelled"
            ]
        );
        assert_eq!(h.order().reason.as_deref(), Some("timed out waiting for payment"));

        let mut h = History::placed();
        h.deliver(ShopEvent::InventoryReserved(inventory(None, &[])), 101);
        h.deliver(ShopEvent::PaymentAuthorized(payment(None)), 102);
        h.deliver(ShopEvent::PaymentCaptured(payment(None)), 103);
        assert_eq!(
            h.deliver(timed_out("completion"), 132),
            ["shop.inventory.commit_requested"]
        );
        assert_eq!(h.order().deadline(&TIMEOUTS), Some(162), "the clock restarts");
        assert_eq!(
            h.deliver(ShopEvent::InventoryCommitted(inventory(None, &[])), 133),
            ["shop.order.confirmed"]
        );
    }

    #[test]
    fn a_refused_capture_cancels_returns_the_stock_and_voids() {
        let mut h = History::placed();
        h.deliver(ShopEvent::InventoryReserved(inventory(None, &[])), 101);
        h.deliver(ShopEvent::PaymentAuthorized(payment(None)), 102);
        h.deliver(ShopEvent::InventoryCommitted(inventory(None, &[])), 103);
        assert_eq!(
            h.deliver(
                ShopEvent::PaymentDeclined(payment(Some("capture refused: expired"))),
                104
            ),
            [
                "shop.inventory.release_requested",
                "shop.payment.void_requested",
                "shop.order.cancelled"
            ]
        );
        assert_eq!(h.order().status, OrderStatus::Cancelled);
    }

    #[test]
    fn a_failed_commit_cancels_and_gives_the_money_back() {
        let mut h = History::placed();
        h.deliver(ShopEvent::InventoryReserved(inventory(None, &[])), 101);
        h.deliver(ShopEvent::PaymentAuthorized(payment(None)), 102);
        let rejected = ShopEvent::InventoryRejected(inventory(Some("reservation expired"), &[]));
        assert_eq!(
            h.deliver(rejected, 103),
            ["shop.payment.void_requested", "shop.order.cancelled"]
        );
    }

    #[test]
    fn only_commands_and_milestones_are_published() {
        assert!(publishes(&ShopEvent::PaymentCaptureRequested(
            History::placed().order().payment_command()
        )));
        assert!(!publishes(&cancel_request()));
        assert!(!publishes(&ShopEvent::PaymentAuthorized(payment(None))));
    }
}
