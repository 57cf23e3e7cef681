//! Contacts (from `user.registered`) and every notification sent, in SQL. A delivered
//! event is sent at most once per event id: the inbox is checked before sending and
//! written with the record; a crash between the two sends it again (at-least-once,
//! the one duplicate an outside channel can see).

use serde::Serialize;
use shop_domain::ShopEvent;
use shop_domain::inbox;
use shop_domain::sql::{Sql, SqlError, SqlValue, migrate};

use crate::messages::{Address, Contact, Draft, otp_message, render};

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS contacts (
        user_id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT, phone TEXT)",
    "CREATE TABLE IF NOT EXISTS notifications (
        id TEXT PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, user_id TEXT, template TEXT NOT NULL,
        channel TEXT NOT NULL, destination TEXT, subject TEXT NOT NULL, body TEXT NOT NULL,
        created_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS notifications_by_user ON notifications (user_id, created_at)",
    inbox::SCHEMA,
];

/// Sends a rendered message; which channel it used (`email`, `sms`, `log`).
pub trait Channels {
    fn send(&self, draft: &Draft) -> Result<&'static str, String>;
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    pub id: String,
    pub template: String,
    pub channel: String,
    pub destination: Option<String>,
    pub subject: String,
    pub body: String,
    pub created_at: String,
}

pub struct Records<'a, D: Sql> {
    pub db: &'a D,
    pub now_text: String,
    pub new_id: &'a dyn Fn() -> String,
}

#[derive(Debug, PartialEq)]
pub enum Handled {
    Sent(&'static str),
    Duplicate,
    Ignored,
}

impl<'a, D: Sql> Records<'a, D> {
    /// The records in `db`, at `now` (seconds).
    pub fn at(db: &'a D, now: i64, new_id: &'a dyn Fn() -> String) -> Self {
        Self {
            db,
            now_text: shop_domain::time::rfc3339(now),
            new_id,
        }
    }

    pub fn migrate(&self) -> Result<(), SqlError> {
        migrate(self.db, SCHEMA)
    }

    fn contact(&self, user_id: &str) -> Result<Option<Contact>, SqlError> {
        let rows = self.db.execute(
            "SELECT name, email, phone FROM contacts WHERE user_id = ?",
            &[user_id.into()],
        )?;
        Ok(rows.first().map(|r| {
            let text = |i: usize| r.get(i).and_then(SqlValue::text).map(str::to_string);
            Contact {
                user_id: user_id.to_string(),
                name: text(0).unwrap_or_default(),
                email: text(1),
                phone: text(2),
            }
        }))
    }

    pub fn handle(&self, event_id: &str, event: &ShopEvent, channels: &impl Channels) -> Result<Handled, String> {
        let sql = |e: SqlError| e.to_string();
        if inbox::handled_before(self.db, event_id).map_err(sql)? {
            return Ok(Handled::Duplicate);
        }
        let user_id = match event {
            ShopEvent::OrderConfirmed(o) | ShopEvent::OrderCancelled(o) => Some(o.user_id.as_str()),
            _ => None,
        };
        let contact = match user_id {
            // Its user.registered may still be on its way (the two topics are read
            // independently): fail, so the trigger retries and, if it never comes,
            // dead-letters the event rather than mailing no one.
            Some(id) => Some(
                self.contact(id)
                    .map_err(sql)?
                    .ok_or_else(|| format!("no contact for user {id} yet: waiting for its user.registered"))?,
            ),
            None => None,
        };
        let Some(draft) = render(event, contact.as_ref()) else {
            return Ok(Handled::Ignored);
        };
        // Kept whatever becomes of the welcome message, so the customer's later
        // notifications find their address.
        if let ShopEvent::UserRegistered(user) = event {
            self.db
                .execute(
                    "INSERT INTO contacts (user_id, name, email, phone) VALUES (?, ?, ?, ?) \
                     ON CONFLICT (user_id) DO UPDATE SET name = excluded.name, email = excluded.email, \
                     phone = excluded.phone",
                    &[
                        user.user_id.clone().into(),
                        user.name.clone().into(),
                        user.email.clone().into(),
                        user.phone.clone().into(),
                    ],
                )
                .map_err(sql)?;
        }
        let channel = channels.send(&draft)?;
        let handled = inbox::handle_once(self.db, SCHEMA, event_id, &self.now_text, || {
            self.insert(&(self.new_id)(), event_id, &draft, channel)?;
            Ok(Handled::Sent(channel))
        })
        .map_err(sql)?;
        Ok(handled.unwrap_or(Handled::Duplicate))
    }

    /// Sends a login code handed over by the users service, and records the message
    /// with the code masked.
    pub fn deliver_otp(
        &self,
        delivery: &shop_domain::types::OtpDelivery,
        channels: &impl Channels,
    ) -> Result<&'static str, String> {
        let (draft, recorded_body) = otp_message(delivery);
        let channel = channels.send(&draft)?;
        let recorded = Draft {
            body: recorded_body,
            ..draft
        };
        let id = (self.new_id)();
        self.insert(&id, &format!("otp:{id}"), &recorded, channel)
            .map_err(|e| e.to_string())?;
        Ok(channel)
    }

    fn insert(&self, id: &str, event_id: &str, draft: &Draft, channel: &str) -> Result<(), SqlError> {
        let destination = draft.to.as_ref().map(|a| match a {
            Address::Email(e) | Address::Phone(e) => e.clone(),
        });
        self.db.execute(
            "INSERT INTO notifications (id, event_id, user_id, template, channel, destination, subject, body, \
             created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                id.into(),
                event_id.into(),
                draft.user_id.clone().into(),
                draft.template.into(),
                channel.into(),
                destination.into(),
                draft.subject.clone().into(),
                draft.body.clone().into(),
                self.now_text.clone().into(),
            ],
        )?;
        Ok(())
    }

    /// A customer's notifications, newest first.
    pub fn of_user(&self, user_id: &str, limit: i64) -> Result<Vec<Notification>, SqlError> {
        let rows = self.db.execute(
            "SELECT id, template, channel, destination, subject, body, created_at FROM notifications \
             WHERE user_id = ? ORDER BY created_at DESC, id LIMIT ?",
            &[user_id.into(), limit.into()],
        )?;
        Ok(rows
            .iter()
            .map(|r| {
                let text = |i: usize| r.get(i).and_then(SqlValue::text).unwrap_or_default().to_string();
                Notification {
                    id: text(0),
                    template: text(1),
                    channel: text(2),
                    destination: r.get(3).and_then(SqlValue::text).map(str::to_string),
                    subject: text(4),
                    body: text(5),
                    created_at: text(6),
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use shop_domain::events::{OrderConcluded, UserRegistered};
    use shop_domain::sql::testing::{MemoryDb, sequential_ids};
    use shop_domain::types::Money;

    use super::*;

    #[derive(Default)]
    struct Outbox {
        sent: RefCell<Vec<Draft>>,
        fail: bool,
    }

    impl Channels for Outbox {
        fn send(&self, draft: &Draft) -> Result<&'static str, String> {
            if self.fail {
                return Err("mail API down".into());
            }
            self.sent.borrow_mut().push(draft.clone());
            Ok("log")
        }
    }

    #[test]
    fn sends_once_per_event_and_lists_a_users_notifications() {
        let db = MemoryDb::default();
        let new_id = sequential_ids();
        let records = Records {
            db: &db,
            now_text: "2026-11-22T00:00:00Z".into(),
            new_id: &new_id,
        };
        records.migrate().unwrap();
        let channels = Outbox::default();
        let registered = ShopEvent::UserRegistered(UserRegistered {
            user_id: "u-1".into(),
            email: Some("ada@example.com".into()),
            phone: None,
            name: "Ada".into(),
        });
        assert_eq!(records.handle("e-1", &registered, &channels), Ok(Handled::Sent("log")));
        assert_eq!(records.handle("e-1", &registered, &channels), Ok(Handled::Duplicate));
        let confirmed = ShopEvent::OrderConfirmed(OrderConcluded {
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            total: Money {
                amount: 100,
                currency: "EUR".into(),
            },
            reason: None,
        });
        let down = Outbox {
            fail: true,
            ..Outbox::default()
        };
        let stranger = ShopEvent::OrderConfirmed(OrderConcluded {
            user_id: "u-unknown".into(),
            ..match &confirmed {
                ShopEvent::OrderConfirmed(o) => o.clone(),
                _ => unreachable!(),
            }
        });
        let waiting = records.handle("e-0", &stranger, &channels).unwrap_err();
        assert!(waiting.contains("waiting for its user.registered"), "{waiting}");
        let records = Records {
            now_text: "2026-11-22T00:01:00Z".into(),
            ..records
        };
        assert!(
            records.handle("e-2", &confirmed, &down).is_err(),
            "a failed send is retried"
        );
        assert_eq!(records.handle("e-2", &confirmed, &channels), Ok(Handled::Sent("log")));
        assert_eq!(channels.sent.borrow().len(), 2);
        assert_eq!(
            channels.sent.borrow()[1].to,
            Some(Address::Email("ada@example.com".into())),
            "the address comes from the registration"
        );
        let listed = records.of_user("u-1", 10).unwrap();
        let templates: Vec<&str> = listed.iter().map(|n| n.template.as_str()).collect();
        assert_eq!(templates, ["order_confirmed", "welcome"]);
        assert!(records.of_user("u-2", 10).unwrap().is_empty());
    }

    #[test]
    fn a_login_code_is_sent_and_recorded_masked() {
        let db = MemoryDb::default();
        let new_id = sequential_ids();
        let records = Records::at(&db, 1_795_000_000, &new_id);
        records.migrate().unwrap();
        let channels = Outbox::default();
        let delivery = shop_domain::types::OtpDelivery {
            user_id: Some("u-1".into()),
            channel: "email".into(),
            destination: "ada@example.com".into(),
            code: "482913".into(),
            expires_at: "2026-11-22T00:05:00Z".into(),
        };
        assert_eq!(records.deliver_otp(&delivery, &channels), Ok("log"));
        assert!(
            channels.sent.borrow()[0].body.contains("482913"),
            "the mail carries the code"
        );
        assert!(!db.dump().contains("482913"), "the record does not: {}", db.dump());
        let mine = records.of_user("u-1", 10).unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].template, "otp");
        let down = Outbox {
            fail: true,
            ..Outbox::default()
        };
        assert!(records.deliver_otp(&delivery, &down).is_err());
        assert_eq!(
            records.of_user("u-1", 10).unwrap().len(),
            1,
            "nothing recorded when not sent"
        );
    }
}
