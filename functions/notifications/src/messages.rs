//! What to say for each event, and to whom.

use shop_domain::ShopEvent;
use shop_domain::types::{Money, OtpDelivery};

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Email(String),
    Phone(String),
}

/// A customer's ways to be reached (from `user.registered`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub user_id: String,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
}

impl Contact {
    fn address(&self) -> Option<Address> {
        self.email
            .clone()
            .map(Address::Email)
            .or_else(|| self.phone.clone().map(Address::Phone))
    }
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub user_id: Option<String>,
    pub template: &'static str,
    /// `None` when the customer's contact is unknown: recorded, sent to the log.
    pub to: Option<Address>,
    pub subject: String,
    pub body: String,
}

pub fn money(m: &Money) -> String {
    format!("{}.{:02} {}", m.amount / 100, (m.amount % 100).abs(), m.currency)
}

/// The login code message for `delivery`, and the same with the code masked: what is
/// recorded (and shown in `GET /notifications`) once the code is sent.
pub fn otp_message(delivery: &OtpDelivery) -> (Draft, String) {
    let text = |code: &str| {
        format!(
            "Your login code is {code}. It works once, until {}.",
            delivery.expires_at
        )
    };
    let draft = Draft {
        user_id: delivery.user_id.clone(),
        template: "otp",
        to: Some(match delivery.channel.as_str() {
            "phone" | "sms" => Address::Phone(delivery.destination.clone()),
            _ => Address::Email(delivery.destination.clone()),
        }),
        subject: "Your login code".into(),
        body: text(&delivery.code),
    };
    (draft, text("••••••"))
}

/// The message for `event`, if it calls for one; `contact` is its user's, when known.
pub fn render(event: &ShopEvent, contact: Option<&Contact>) -> Option<Draft> {
    let to = contact.and_then(Contact::address);
    let greeting = contact.map_or_else(|| "Hello".to_string(), |c| format!("Hello {}", c.name));
    Some(match event {
        ShopEvent::UserRegistered(user) => Draft {
            user_id: Some(user.user_id.clone()),
            template: "welcome",
            to: user
                .email
                .clone()
                .map(Address::Email)
                .or_else(|| user.phone.clone().map(Address::Phone)),
            subject: "Welcome to the shop".into(),
            body: format!("Welcome to the shop, {}! Your account is ready.", user.name),
        },
        ShopEvent::OrderConfirmed(order) => Draft {
            user_id: Some(order.user_id.clone()),
            template: "order_confirmed",
            to,
            subject: format!("Order {} confirmed", order.order_id),
            body: format!(
                "{greeting}, your order {} is confirmed. Total: {}.",
                order.order_id,
                money(&order.total)
            ),
        },
        ShopEvent::OrderCancelled(order) => Draft {
            user_id: Some(order.user_id.clone()),
            template: "order_cancelled",
            to,
            subject: format!("Order {} cancelled", order.order_id),
            body: format!(
                "{greeting}, your order {} was cancelled ({}). Nothing was charged or any charge was returned.",
                order.order_id,
                order.reason.as_deref().unwrap_or("no reason given")
            ),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use shop_domain::events::{OrderConcluded, OtpRequested, UserRegistered};

    use super::*;

    #[test]
    fn each_event_gets_its_message_and_address() {
        let ada = Contact {
            user_id: "u-1".into(),
            name: "Ada".into(),
            email: Some("ada@example.com".into()),
            phone: None,
        };
        let confirmed = ShopEvent::OrderConfirmed(OrderConcluded {
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            total: Money {
                amount: 2598,
                currency: "EUR".into(),
            },
            reason: None,
        });
        let draft = render(&confirmed, Some(&ada)).unwrap();
        assert_eq!(draft.template, "order_confirmed");
        assert_eq!(draft.to, Some(Address::Email("ada@example.com".into())));
        assert!(
            draft.body.contains("Hello Ada") && draft.body.contains("25.98 EUR"),
            "{}",
            draft.body
        );
        assert_eq!(render(&confirmed, None).unwrap().to, None);

        let otp = ShopEvent::OtpRequested(OtpRequested {
            user_id: None,
            channel: "sms".into(),
            destination: "+3312345".into(),
            expires_at: "2026-11-22T00:05:00Z".into(),
        });
        assert_eq!(render(&otp, None), None, "the code comes by delivery, not by event");
        let (draft, recorded) = otp_message(&OtpDelivery {
            user_id: None,
            channel: "sms".into(),
            destination: "+3312345".into(),
            code: "123456".into(),
            expires_at: "2026-11-22T00:05:00Z".into(),
        });
        assert_eq!(draft.to, Some(Address::Phone("+3312345".into())));
        assert!(draft.body.contains("123456"));
        assert!(
            !recorded.contains("123456") && recorded.contains("2026-11-22T00:05:00Z"),
            "{recorded}"
        );

        let registered = ShopEvent::UserRegistered(UserRegistered {
            user_id: "u-2".into(),
            email: None,
            phone: Some("+3399".into()),
            name: "Bob".into(),
        });
        assert_eq!(
            render(&registered, None).unwrap().to,
            Some(Address::Phone("+3399".into()))
        );
        let command = ShopEvent::InventoryReleaseRequested(shop_domain::events::InventoryCommand {
            order_id: "o-1".into(),
            lines: vec![],
        });
        assert_eq!(render(&command, None), None);
    }
}
