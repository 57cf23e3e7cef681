//! Host-side bindings generated from the WIT in `wit/` for the worlds the triggers
//! call into. Each capability binds its own interfaces in its module; the WASI ones
//! come from wasmtime-wasi / wasmtime-wasi-http.

/// `wasi:messaging@0.2.0-draft`: the `types` and `producer` imports any component may
/// use, and the `incoming-handler` export of Kafka-triggered components (our
/// `shop:messaging/kafka-handler` world).
pub mod messaging {
    wasmtime::component::bindgen!({
        path: "../wit/shop-messaging",
        world: "shop:messaging/kafka-handler",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "wasi:messaging/types.client": crate::capability::messaging::MessagingClient,
            "wasi:messaging/types.message": crate::capability::messaging::GuestMessage,
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
