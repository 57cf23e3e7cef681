//! Host capabilities a component may import, one module each, granted per component
//! by the manifest.

pub mod allowed_hosts;
pub mod outbound_http;
