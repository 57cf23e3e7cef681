//! Triggers: what turns an outside event into a component invocation, one module each.

pub mod cron;
pub mod http;
pub mod kafka;
