//! The notifications service (SPEC §3.8): consumes user and order events, renders
//! messages (welcome, OTP code, order confirmed or cancelled), sends them through a
//! channel (mail or SMS over HTTP APIs when configured, the log otherwise) and records
//! each one, so `GET /notifications` shows a customer theirs.
//!
//! - `messages`: rendering (pure).
//! - `records`: contacts and sent notifications in SQL, dedupe by event id.
//! - `channels`: mail, SMS and the log, over spin-sdk (in the components only).
//!
//! Its components: `notifications-http` (`GET /notifications`; Spin or the `shop` host
//! runs it) and `notifications-events` (the Kafka handler and channels; the `shop` host).

#[cfg(target_arch = "wasm32")]
pub mod channels;
pub mod messages;
pub mod records;
