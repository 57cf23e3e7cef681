//! Host-side bindings generated from the WIT in `wit/` for the Spin interfaces this
//! host implements (the WASI ones come from wasmtime-wasi / wasmtime-wasi-http).

wasmtime::component::bindgen!({
    path: "../wit/fermyon-spin",
    world: "fermyon:spin/host",
    imports: { default: async },
    with: {
        "fermyon:spin/key-value.store": crate::capability::key_value::OpenStore,
        "fermyon:spin/sqlite.connection": crate::capability::sqlite::OpenDatabase,
        "fermyon:spin/redis.connection": crate::capability::redis::RedisConnection,
        "fermyon:spin/mqtt.connection": crate::capability::mqtt::MqttConnection,
    },
});

/// `spin:postgres@4.2.0` (served to 4.0.0 importers too), the outbound PostgreSQL API
/// of spin-sdk 5's `pg4` module and of spin-sdk 7.
pub mod postgres4 {
    wasmtime::component::bindgen!({
        path: "../wit/spin-postgres",
        world: "spin:postgres/host",
        imports: {
            // Creating the row stream can fail (resource table full): trap rather than panic.
            "spin:postgres/postgres.[method]connection.query-async": async | trappable,
            "spin:postgres/postgres.[constructor]connection-builder": async | trappable,
            default: async,
        },
        with: {
            "spin:postgres/postgres.connection": crate::capability::postgres::PgConnection,
            "spin:postgres/postgres.connection-builder": crate::capability::postgres::PgConnectionBuilder,
        },
    });
}

/// `spin:variables@3.0.0`, the variables API of spin-sdk 7.
pub mod variables3 {
    wasmtime::component::bindgen!({
        path: "../wit/spin-variables",
        world: "spin:variables/host",
        imports: { default: async },
    });
}

/// `spin:key-value@3.0.0`, the key-value API of spin-sdk 7.
pub mod key_value3 {
    wasmtime::component::bindgen!({
        path: "../wit/spin-key-value",
        world: "spin:key-value/host",
        imports: {
            // Creating the stream can fail (resource table full): trap rather than panic.
            "spin:key-value/key-value.[method]store.get-keys": async | trappable,
            default: async,
        },
        with: {
            "spin:key-value/key-value.store": crate::capability::key_value::OpenStore,
        },
    });
}

/// `spin:redis@3.0.0`, the outbound Redis API of spin-sdk 7.
pub mod redis3 {
    wasmtime::component::bindgen!({
        path: "../wit/spin-redis",
        world: "spin:redis/host",
        imports: { default: async },
        with: {
            "spin:redis/redis.connection": crate::capability::redis::RedisConnection,
        },
    });
}

/// `spin:mqtt@3.0.0`, the outbound MQTT API of spin-sdk 7.
pub mod mqtt3 {
    wasmtime::component::bindgen!({
        path: "../wit/spin-mqtt",
        world: "spin:mqtt/host",
        imports: { default: async },
        with: {
            "spin:mqtt/mqtt.connection": crate::capability::mqtt::MqttConnection,
        },
    });
}

/// `spin:sqlite@3.1.0` (served to 3.0.0 importers too), the SQLite API of spin-sdk 5's
/// `sqlite3` module and of spin-sdk 7.
pub mod sqlite3 {
    wasmtime::component::bindgen!({
        path: "../wit/spin-sqlite",
        world: "spin:sqlite/host",
        imports: {
            // Creating the row stream can fail (resource table full): trap rather than panic.
            "spin:sqlite/sqlite.[method]connection.execute-async": async | trappable,
            default: async,
        },
        with: {
            "spin:sqlite/sqlite.connection": crate::capability::sqlite::OpenDatabase,
        },
    });
}

/// `wasi:keyvalue@0.2.0-draft2` (store, atomics, batch) over Spin's key-value stores.
pub mod wasi_keyvalue {
    wasmtime::component::bindgen!({
        path: "../wit/wasi-keyvalue",
        world: "wasi:keyvalue/host",
        imports: {
            // A swap that lost the race hands the cas resource back inside the error.
            "wasi:keyvalue/atomics.swap": async | trappable,
            default: async,
        },
        with: {
            "wasi:keyvalue/store.bucket": crate::capability::key_value::OpenStore,
            "wasi:keyvalue/atomics.cas": crate::capability::key_value::wasi::PendingSwap,
        },
    });
}

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
