//! Host-side bindings generated from the WIT in `wit/` for the worlds the triggers
//! call into. Each capability binds its own interfaces in its module; the WASI ones
//! come from wasmtime-wasi / wasmtime-wasi-http.

/// The `wasi:messaging@0.2.0-draft` `incoming-handler` export of Kafka-triggered
/// components (our `shop:messaging/kafka-handler` world); its imports are the
/// messaging capability's.
pub mod messaging {
    wasmtime::component::bindgen!({
        path: "../wit/shop-messaging",
        world: "shop:messaging/kafka-handler",
        exports: { default: async },
        with: {
            "wasi:messaging/types": crate::capability::messaging::bindings::wasi::messaging::types,
            "wasi:messaging/producer": crate::capability::messaging::bindings::wasi::messaging::producer,
        },
    });
}

/// Spin's cron world (`fermyon:spin-cron@2.0.0`): components export `handle-cron-event`.
pub mod cron {
    wasmtime::component::bindgen!({
        path: "../wit/spin-cron",
        world: "fermyon:spin-cron/spin-cron",
        imports: { default: async },
        exports: { default: async },
    });
}
