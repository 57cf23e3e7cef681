//! Host capabilities a component may import, one module each, granted per component
//! by the manifest.

pub mod allowed_hosts;
pub mod key_value;
pub mod outbound_http;
pub mod variables;
