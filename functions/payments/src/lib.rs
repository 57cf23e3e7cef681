//! The payments service (SPEC §3.7): the saga's payment commands, each idempotent per
//! order, against a payment provider over outbound HTTP; and a sandbox provider for
//! local runs (`tok_ok` succeeds, `tok_declined` is declined, `tok_slow` answers late).
//!
//! - `ledger`: one payment per order in SQL, handling commands through `Provider`.
//! - `sandbox`: the sandbox provider's state and rules.
//! - `service`: HTTP: `GET /payments/{order_id}` and the sandbox's API.
//!
//! Its components: `payments-http` (the API and the sandbox; Spin or the `shop` host
//! runs it) and `payments-events` (saga commands against the provider; the `shop` host).

pub mod ledger;
pub mod sandbox;
pub mod service;
