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
    },
});

/// `spin:postgres@4.0.0`, the outbound PostgreSQL API of spin-sdk 5 (`pg4`).
pub mod postgres4 {
    wasmtime::component::bindgen!({
        path: "../wit/spin-postgres",
        world: "spin:postgres/host",
        imports: { default: async },
        with: {
            "spin:postgres/postgres.connection": crate::capability::postgres::PgConnection,
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
