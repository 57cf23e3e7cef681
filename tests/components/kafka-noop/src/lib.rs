//! Test component: a `wasi:messaging` incoming handler that accepts every message
//! without touching it, so a benchmark measures the trigger and the host alone.
#![cfg(target_arch = "wasm32")]

spin_sdk::wit_bindgen::generate!({
    world: "kafka-handler",
    path: "../../../wit/shop-messaging",
    runtime_path: "spin_sdk::wit_bindgen::rt",
    generate_all,
});

use exports::wasi::messaging::incoming_handler::Guest;
use wasi::messaging::types::{Error, Message};

struct Noop;

impl Guest for Noop {
    fn handle(_message: Message) -> Result<(), Error> {
        Ok(())
    }
}

export!(Noop);
