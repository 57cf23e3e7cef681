//! Every event the shop publishes, bound to its CloudEvents `type` and topic. A
//! consumer decodes with [`ShopEvent::decode`]; what a producer encodes with
//! [`ShopEvent::to_json`] is exactly what that accepts (the contract tests below run
//! every type through both).

use std::fmt;

use crate::Envelope;
use crate::events::*;
use crate::topics;

#[derive(Debug, Clone, PartialEq)]
pub enum EventError {
    UnknownType(String),
    InvalidData { event_type: String, reason: String },
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::UnknownType(t) => write!(f, "unknown event type `{t}`"),
            EventError::InvalidData { event_type, reason } => write!(f, "invalid `{event_type}` data: {reason}"),
        }
    }
}

impl std::error::Error for EventError {}

/// Declares the events: variant, CloudEvents type, payload record, topic, and how to
/// find the Kafka key (the aggregate id) in the payload.
macro_rules! shop_events {
    ($($variant:ident => $type:literal, $payload:ty, $topic:expr, |$p:ident| $key:expr;)*) => {
        #[derive(Debug, Clone, PartialEq)]
        pub enum ShopEvent {
            $($variant($payload),)*
        }

        impl ShopEvent {
            /// Every CloudEvents type this crate knows.
            pub const TYPES: &'static [&'static str] = &[$($type,)*];

            pub fn event_type(&self) -> &'static str {
                match self { $(ShopEvent::$variant(_) => $type,)* }
            }

            pub fn topic(&self) -> &'static str {
                match self { $(ShopEvent::$variant(_) => $topic,)* }
            }

            /// The record key: one aggregate's events share a partition, in order.
            pub fn key(&self) -> String {
                match self { $(ShopEvent::$variant($p) => $key.clone(),)* }
            }

            pub fn to_json(&self) -> Vec<u8> {
                let encoded = match self { $(ShopEvent::$variant(p) => serde_json::to_vec(p),)* };
                encoded.expect("domain records always serialize")
            }

            pub fn decode(event_type: &str, data: &[u8]) -> Result<Self, EventError> {
                let invalid = |e: serde_json::Error| EventError::InvalidData {
                    event_type: event_type.to_string(),
                    reason: e.to_string(),
                };
                match event_type {
                    $($type => serde_json::from_slice(data).map(ShopEvent::$variant).map_err(invalid),)*
                    other => Err(EventError::UnknownType(other.to_string())),
                }
            }
        }
    };
}

shop_events! {
    UserRegistered => "shop.user.registered", UserRegistered, topics::USERS, |p| p.user_id;
    OtpRequested => "shop.user.otp_requested", OtpRequested, topics::USERS, |p| p.destination;
    ProductCreated => "shop.product.created", ProductChanged, topics::PRODUCTS, |p| p.product.id;
    ProductUpdated => "shop.product.updated", ProductChanged, topics::PRODUCTS, |p| p.product.id;
    ProductDeleted => "shop.product.deleted", ProductDeleted, topics::PRODUCTS, |p| p.product_id;
    OrderPlaced => "shop.order.placed", OrderPlaced, topics::ORDERS, |p| p.order_id;
    OrderCancelRequested => "shop.order.cancel_requested", OrderCancelRequested, topics::ORDERS, |p| p.order_id;
    OrderTimedOut => "shop.order.timed_out", OrderTimedOut, topics::ORDERS, |p| p.order_id;
    OrderConfirmed => "shop.order.confirmed", OrderConcluded, topics::ORDERS, |p| p.order_id;
    OrderCancelled => "shop.order.cancelled", OrderConcluded, topics::ORDERS, |p| p.order_id;
    InventoryReserveRequested => "shop.inventory.reserve_requested", InventoryCommand, topics::INVENTORY, |p| p.order_id;
    InventoryReleaseRequested => "shop.inventory.release_requested", InventoryCommand, topics::INVENTORY, |p| p.order_id;
    InventoryCommitRequested => "shop.inventory.commit_requested", InventoryCommand, topics::INVENTORY, |p| p.order_id;
    InventoryReserved => "shop.inventory.reserved", InventoryResult, topics::INVENTORY, |p| p.order_id;
    InventoryRejected => "shop.inventory.rejected", InventoryResult, topics::INVENTORY, |p| p.order_id;
    InventoryReleased => "shop.inventory.released", InventoryResult, topics::INVENTORY, |p| p.order_id;
    InventoryCommitted => "shop.inventory.committed", InventoryResult, topics::INVENTORY, |p| p.order_id;
    PaymentAuthorizeRequested => "shop.payment.authorize_requested", PaymentCommand, topics::PAYMENTS, |p| p.order_id;
    PaymentCaptureRequested => "shop.payment.capture_requested", PaymentCommand, topics::PAYMENTS, |p| p.order_id;
    PaymentVoidRequested => "shop.payment.void_requested", PaymentCommand, topics::PAYMENTS, |p| p.order_id;
    PaymentRefundRequested => "shop.payment.refund_requested", PaymentCommand, topics::PAYMENTS, |p| p.order_id;
    PaymentAuthorized => "shop.payment.authorized", PaymentResult, topics::PAYMENTS, |p| p.order_id;
    PaymentDeclined => "shop.payment.declined", PaymentResult, topics::PAYMENTS, |p| p.order_id;
    PaymentCaptured => "shop.payment.captured", PaymentResult, topics::PAYMENTS, |p| p.order_id;
    PaymentVoided => "shop.payment.voided", PaymentResult, topics::PAYMENTS, |p| p.order_id;
    PaymentRefunded => "shop.payment.refunded", PaymentResult, topics::PAYMENTS, |p| p.order_id;
}

impl ShopEvent {
    /// The CloudEvents attributes for publishing this event; the subject is its key.
    pub fn envelope(&self, id: String, source: &str, time: String) -> Envelope {
        Envelope {
            id,
            event_type: self.event_type().to_string(),
            source: source.to_string(),
            time,
            subject: Some(self.key()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Money, OrderLine, Product};

    fn samples() -> Vec<ShopEvent> {
        let money = Money::new(2598, "EUR");
        let lines = vec![OrderLine {
            product_id: "p-1".into(),
            sku: "SKU-1".into(),
            quantity: 2,
            unit_price: Money::new(1299, "EUR"),
        }];
        let product = Product {
            id: "p-1".into(),
            sku: "SKU-1".into(),
            name: "Mug".into(),
            description: "A mug".into(),
            category: "kitchen".into(),
            price: Money::new(1299, "EUR"),
            created_at: "2026-11-22T00:00:00Z".into(),
            updated_at: "2026-11-22T00:00:00Z".into(),
        };
        let command = InventoryCommand {
            order_id: "o-1".into(),
            lines: lines.clone(),
        };
        let inventory = InventoryResult {
            order_id: "o-1".into(),
            reason: Some("out of stock".into()),
            shortages: vec!["SKU-1".into()],
        };
        let payment_command = PaymentCommand {
            order_id: "o-1".into(),
            amount: money.clone(),
            user_id: Some("u-1".into()),
        };
        let payment = PaymentResult {
            order_id: "o-1".into(),
            payment_id: Some("pay-1".into()),
            amount: money.clone(),
            reason: None,
        };
        let concluded = OrderConcluded {
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            total: money.clone(),
            reason: None,
        };
        vec![
            ShopEvent::UserRegistered(UserRegistered {
                user_id: "u-1".into(),
                email: Some("a@example.com".into()),
                phone: None,
                name: "Ada".into(),
            }),
            ShopEvent::OtpRequested(OtpRequested {
                user_id: None,
                channel: "email".into(),
                destination: "a@example.com".into(),
                expires_at: "2026-11-22T00:05:00Z".into(),
            }),
            ShopEvent::ProductCreated(ProductChanged {
                product: product.clone(),
            }),
            ShopEvent::ProductUpdated(ProductChanged { product }),
            ShopEvent::ProductDeleted(ProductDeleted {
                product_id: "p-1".into(),
            }),
            ShopEvent::OrderPlaced(OrderPlaced {
                order_id: "o-1".into(),
                user_id: "u-1".into(),
                lines,
                total: money,
            }),
            ShopEvent::OrderCancelRequested(OrderCancelRequested {
                order_id: "o-1".into(),
                user_id: "u-1".into(),
            }),
            ShopEvent::OrderTimedOut(OrderTimedOut {
                order_id: "o-1".into(),
                step: "payment".into(),
            }),
            ShopEvent::OrderConfirmed(concluded.clone()),
            ShopEvent::OrderCancelled(concluded),
            ShopEvent::InventoryReserveRequested(command.clone()),
            ShopEvent::InventoryReleaseRequested(command.clone()),
            ShopEvent::InventoryCommitRequested(command),
            ShopEvent::InventoryReserved(inventory.clone()),
            ShopEvent::InventoryRejected(inventory.clone()),
            ShopEvent::InventoryReleased(inventory.clone()),
            ShopEvent::InventoryCommitted(inventory),
            ShopEvent::PaymentAuthorizeRequested(payment_command.clone()),
            ShopEvent::PaymentCaptureRequested(payment_command.clone()),
            ShopEvent::PaymentVoidRequested(payment_command.clone()),
            ShopEvent::PaymentRefundRequested(payment_command),
            ShopEvent::PaymentAuthorized(payment.clone()),
            ShopEvent::PaymentDeclined(payment.clone()),
            ShopEvent::PaymentCaptured(payment.clone()),
            ShopEvent::PaymentVoided(payment.clone()),
            ShopEvent::PaymentRefunded(payment),
        ]
    }

    /// The contract: what a producer emits is what a consumer decodes, for every type.
    #[test]
    fn every_event_type_round_trips_through_its_json() {
        let samples = samples();
        let covered: Vec<&str> = samples.iter().map(ShopEvent::event_type).collect();
        assert_eq!(covered, ShopEvent::TYPES, "a sample for every event type, in order");
        for event in samples {
            let decoded = ShopEvent::decode(event.event_type(), &event.to_json()).unwrap();
            assert_eq!(decoded, event);
            assert!(event.topic().starts_with("shop."));
            assert!(!event.key().is_empty());
        }
    }

    #[test]
    fn bad_data_and_unknown_types_are_errors() {
        assert!(matches!(
            ShopEvent::decode("shop.order.placed", b"{\"order_id\": 1}"),
            Err(EventError::InvalidData { .. })
        ));
        assert!(matches!(
            ShopEvent::decode("shop.nope", b"{}"),
            Err(EventError::UnknownType(_))
        ));
    }
}
