//! Triggers: what turns an outside event into a component invocation, one module each.

pub mod http;
