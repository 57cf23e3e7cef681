//! Spin key-value (`fermyon:spin/key-value@2.0.0`): stores opened by label, each label
//! served by a backend chosen in the runtime config (`[key_value_store.<label>]`),
//! and access limited to the labels a component lists in `key_value_stores`.
//!
//! Without runtime config the `default` label is an embedded SQLite file under the
//! data dir, as in Spin.

mod redis_store;
mod sqlite_store;
pub mod wasi;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use wasmtime::component::{Linker, Resource, ResourceTable};

use self::bindings::fermyon::spin::key_value::{self, Error};
use self::bindings3::spin::key_value::key_value as v3;
use self::wasi_bindings::wasi::keyvalue as wasi_keyvalue;
use super::redis::RedisSettings;
use super::sqlite::Synchronous;
use super::{AppContext, Capability, CapabilityView, CheckContext, ComponentContext, InstanceContext, Project, view};
use crate::manifest::Problem;
use crate::runtime_config::LabelledTable;
use crate::state::HostState;
use crate::telemetry::{Kind, Span, TraceCell, finish_with};
use redis_store::RedisStore;
use sqlite_store::SqliteStore;

/// `fermyon:spin/key-value@2.0.0` (spin-sdk 5).
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/fermyon-spin",
        world: "fermyon:spin/key-value-host",
        imports: { default: async },
        with: { "fermyon:spin/key-value.store": super::OpenStore },
    });
}

/// `spin:key-value@3.0.0`, the key-value API of spin-sdk 7.
pub(crate) mod bindings3 {
    wasmtime::component::bindgen!({
        path: "../wit/spin-key-value",
        world: "spin:key-value/host",
        imports: {
            // Creating the stream can fail (resource table full): trap rather than panic.
            "spin:key-value/key-value.[method]store.get-keys": async | trappable,
            default: async,
        },
        with: {
            "spin:key-value/key-value.store": super::OpenStore,
        },
    });
}

/// `wasi:keyvalue@0.2.0-draft2` (store, atomics, batch) over Spin's key-value stores.
pub(crate) mod wasi_bindings {
    wasmtime::component::bindgen!({
        path: "../wit/wasi-keyvalue",
        world: "wasi:keyvalue/host",
        imports: {
            // A swap that lost the race hands the cas resource back inside the error.
            "wasi:keyvalue/atomics.swap": async | trappable,
            default: async,
        },
        with: {
            "wasi:keyvalue/store.bucket": super::OpenStore,
            "wasi:keyvalue/atomics.cas": super::wasi::PendingSwap,
        },
    });
}

/// Most stores one instance may hold open at once (Spin's `store-table-full`).
const MAX_OPEN_STORES: usize = 64;

/// One configured store.
#[derive(Clone)]
pub enum Backend {
    Sqlite(SqliteStore),
    Redis(RedisStore),
}

impl Backend {
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "spin (sqlite)",
            Backend::Redis(_) => "redis",
        }
    }

    pub async fn get(&self, key: String) -> Result<Option<Vec<u8>>, String> {
        match self {
            Backend::Sqlite(s) => s.get(key).await,
            Backend::Redis(r) => r.get(key).await,
        }
    }

    pub async fn set(&self, key: String, value: Vec<u8>) -> Result<(), String> {
        match self {
            Backend::Sqlite(s) => s.set(key, value).await,
            Backend::Redis(r) => r.set(key, value).await,
        }
    }

    pub async fn delete(&self, key: String) -> Result<(), String> {
        match self {
            Backend::Sqlite(s) => s.delete(key).await,
            Backend::Redis(r) => r.delete(key).await,
        }
    }

    pub async fn exists(&self, key: String) -> Result<bool, String> {
        match self {
            Backend::Sqlite(s) => s.exists(key).await,
            Backend::Redis(r) => r.exists(key).await,
        }
    }

    pub async fn get_keys(&self) -> Result<Vec<String>, String> {
        match self {
            Backend::Sqlite(s) => s.get_keys().await,
            Backend::Redis(r) => r.get_keys().await,
        }
    }

    pub async fn increment(&self, key: String, delta: i64) -> Result<i64, String> {
        match self {
            Backend::Sqlite(s) => s.increment(key, delta).await,
            Backend::Redis(r) => r.increment(key, delta).await,
        }
    }

    pub async fn compare_and_swap(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, String> {
        match self {
            Backend::Sqlite(s) => s.compare_and_swap(key, expected, value).await,
            Backend::Redis(r) => r.compare_and_swap(key, expected, value).await,
        }
    }
}

/// A store as one instance opened it: each call is a span in the instance's trace.
#[derive(Clone)]
pub struct TracedStore {
    backend: Backend,
    label: Arc<str>,
    trace: TraceCell,
}

impl TracedStore {
    fn span(&self, operation: &'static str) -> Span {
        let mut span = Span::host_call(&self.trace, "", Kind::Client);
        if span.recording() {
            span.set_name(format!("key-value {operation} {}", self.label));
            span.set(
                "db.system.name",
                match self.backend {
                    Backend::Sqlite(_) => "sqlite",
                    Backend::Redis(_) => "redis",
                },
            );
            span.set("db.namespace", self.label.to_string());
            span.set("db.operation.name", operation);
        }
        span
    }

    pub async fn get(&self, key: String) -> Result<Option<Vec<u8>>, String> {
        finish_with(self.span("get"), self.backend.get(key).await)
    }

    pub async fn set(&self, key: String, value: Vec<u8>) -> Result<(), String> {
        finish_with(self.span("set"), self.backend.set(key, value).await)
    }

    pub async fn delete(&self, key: String) -> Result<(), String> {
        finish_with(self.span("delete"), self.backend.delete(key).await)
    }

    pub async fn exists(&self, key: String) -> Result<bool, String> {
        finish_with(self.span("exists"), self.backend.exists(key).await)
    }

    pub async fn get_keys(&self) -> Result<Vec<String>, String> {
        finish_with(self.span("get-keys"), self.backend.get_keys().await)
    }

    pub async fn increment(&self, key: String, delta: i64) -> Result<i64, String> {
        finish_with(self.span("increment"), self.backend.increment(key, delta).await)
    }

    pub async fn compare_and_swap(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, String> {
        let span = self.span("compare-and-swap");
        finish_with(span, self.backend.compare_and_swap(key, expected, value).await)
    }
}

/// A counter's stored form is its decimal text (what Redis INCRBY keeps); a missing
/// key counts as 0.
fn parse_counter(stored: Option<&[u8]>) -> Result<i64, String> {
    match stored {
        None => Ok(0),
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| "value is not an integer or out of range".to_string()),
    }
}

/// `[key_value_store.<label>]` in the runtime config.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum KeyValueStoreConfig {
    /// An embedded SQLite file (`path` relative to the runtime config's directory;
    /// by default `key_value.db` in the data dir).
    Spin {
        path: Option<PathBuf>,
        #[serde(default)]
        synchronous: Synchronous,
    },
    /// A Redis server (`url = "redis://host:port"`).
    Redis { url: String },
}

/// `[key_value_store.<label>]`, named in components' `key_value_stores`.
const STORES: LabelledTable = LabelledTable {
    table: "key_value_store",
    field: "key_value_stores",
    noun: "key-value store",
    labels: |c| &c.key_value_stores,
};

/// Every store label the application can open, with its backend.
#[derive(Clone, Default)]
pub struct KeyValueStores {
    stores: BTreeMap<String, Backend>,
}

impl KeyValueStores {
    /// Builds the stores of the runtime config's `[key_value_store.<label>]` entries;
    /// `default` falls back to `<data_dir>/key_value.db`. Relative `path`s resolve
    /// against `base_dir` (the runtime config file's directory).
    pub fn from_config(
        config: &BTreeMap<String, KeyValueStoreConfig>,
        redis: RedisSettings,
        base_dir: &Path,
        data_dir: &Path,
    ) -> anyhow::Result<Self> {
        let mut stores = BTreeMap::new();
        for (label, entry) in config {
            let key = format!("key_value_store.{label}");
            let backend = match entry {
                KeyValueStoreConfig::Spin { path, synchronous } => {
                    let path = match path {
                        Some(p) => base_dir.join(p),
                        None => data_dir.join("key_value.db"),
                    };
                    Backend::Sqlite(SqliteStore::open(&path, label, *synchronous).with_context(|| key.clone())?)
                }
                KeyValueStoreConfig::Redis { url } => {
                    Backend::Redis(RedisStore::new(url, redis).with_context(|| format!("{key}.url"))?)
                }
            };
            stores.insert(label.clone(), backend);
        }
        if !stores.contains_key("default") {
            let path = data_dir.join("key_value.db");
            stores.insert(
                "default".into(),
                Backend::Sqlite(
                    SqliteStore::open(&path, "default", Synchronous::default()).context("default key-value store")?,
                ),
            );
        }
        Ok(Self { stores })
    }

    pub fn labels(&self) -> impl Iterator<Item = (&str, &Backend)> {
        self.stores.iter().map(|(l, b)| (l.as_str(), b))
    }
}

/// An open store as the guest holds it.
pub struct OpenStore {
    backend: TracedStore,
}

/// Key-value: Spin 2.0 and 3.0, and `wasi:keyvalue`, over the same stores.
pub struct KeyValue;

/// The labels a component may open, and the application's stores.
#[derive(Clone)]
pub struct KeyValueGrant {
    allowed: Arc<BTreeSet<String>>,
    stores: Arc<KeyValueStores>,
}

impl Capability for KeyValue {
    type App = KeyValueStores;
    type Component = KeyValueGrant;
    type Instance = KeyValueAccess;

    const RUNTIME_CONFIG_TABLES: &'static [&'static str] = &[STORES.table];

    fn check(app: &CheckContext<'_>) -> Vec<Problem> {
        STORES
            .read::<KeyValueStoreConfig>(app.runtime_config, Some(app.manifest))
            .1
    }

    fn configure_app(app: &AppContext<'_>) -> anyhow::Result<KeyValueStores> {
        let (entries, problems) = STORES.read::<KeyValueStoreConfig>(app.runtime_config, None);
        crate::runtime_config::first_error(&problems)?;
        // `[redis]` is the Redis capability's table (it reports its problems); Redis stores use it too.
        let redis = app.runtime_config.settings_to_start::<RedisSettings>()?;
        let stores = KeyValueStores::from_config(&entries, redis, app.runtime_config.dir(), app.data_dir)?;
        for (label, backend) in stores.labels() {
            tracing::info!(store = label, backend = backend.kind(), "key-value store");
        }
        Ok(stores)
    }

    fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
        key_value::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        v3::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        wasi_keyvalue::store::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        wasi_keyvalue::atomics::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        wasi_keyvalue::batch::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        Ok(())
    }

    fn configure(stores: &Arc<KeyValueStores>, component: &ComponentContext<'_>) -> anyhow::Result<KeyValueGrant> {
        Ok(KeyValueGrant {
            allowed: Arc::new(component.manifest.key_value_stores.iter().cloned().collect()),
            stores: stores.clone(),
        })
    }

    fn prepare(grant: &KeyValueGrant, instance: &InstanceContext) -> KeyValueAccess {
        KeyValueAccess {
            grant: grant.clone(),
            trace: instance.trace.clone(),
            open_count: 0,
        }
    }
}

/// Per-instance key-value state: which labels this component may open, and how many
/// stores this instance holds.
pub struct KeyValueAccess {
    grant: KeyValueGrant,
    trace: TraceCell,
    open_count: usize,
}

fn other(e: String) -> Error {
    Error::Other(e)
}

fn get_store<'a>(table: &'a ResourceTable, store: &Resource<OpenStore>) -> wasmtime::Result<&'a TracedStore> {
    Ok(&table.get(store)?.backend)
}

impl key_value::Host for CapabilityView<'_, KeyValue> {}

impl CapabilityView<'_, KeyValue> {
    /// Opens `label` for this instance if the component declared it (every API
    /// generation shares this).
    fn open_store(&mut self, label: String) -> Result<Resource<OpenStore>, Error> {
        let kv = &self.state;
        if !kv.grant.allowed.contains(&label) {
            return Err(Error::AccessDenied);
        }
        let Some(backend) = kv.grant.stores.stores.get(&label).cloned() else {
            return Err(Error::NoSuchStore);
        };
        if kv.open_count >= MAX_OPEN_STORES {
            return Err(Error::StoreTableFull);
        }
        let resource = self
            .table
            .push(OpenStore {
                backend: TracedStore {
                    backend,
                    label: Arc::from(label.as_str()),
                    trace: self.state.trace.clone(),
                },
            })
            .map_err(|e| other(e.to_string()))?;
        self.state.open_count += 1;
        Ok(resource)
    }

    fn close_store(&mut self, store: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        self.state.open_count = self.state.open_count.saturating_sub(1);
        Ok(())
    }
}

impl key_value::HostStore for CapabilityView<'_, KeyValue> {
    async fn open(&mut self, label: String) -> Result<Resource<OpenStore>, Error> {
        self.open_store(label)
    }

    async fn get(&mut self, store: Resource<OpenStore>, key: String) -> Result<Option<Vec<u8>>, Error> {
        let backend = get_store(self.table, &store).map_err(|e| other(e.to_string()))?.clone();
        backend.get(key).await.map_err(other)
    }

    async fn set(&mut self, store: Resource<OpenStore>, key: String, value: Vec<u8>) -> Result<(), Error> {
        let backend = get_store(self.table, &store).map_err(|e| other(e.to_string()))?.clone();
        backend.set(key, value).await.map_err(other)
    }

    async fn delete(&mut self, store: Resource<OpenStore>, key: String) -> Result<(), Error> {
        let backend = get_store(self.table, &store).map_err(|e| other(e.to_string()))?.clone();
        backend.delete(key).await.map_err(other)
    }

    async fn exists(&mut self, store: Resource<OpenStore>, key: String) -> Result<bool, Error> {
        let backend = get_store(self.table, &store).map_err(|e| other(e.to_string()))?.clone();
        backend.exists(key).await.map_err(other)
    }

    async fn get_keys(&mut self, store: Resource<OpenStore>) -> Result<Vec<String>, Error> {
        let backend = get_store(self.table, &store).map_err(|e| other(e.to_string()))?.clone();
        backend.get_keys().await.map_err(other)
    }

    async fn drop(&mut self, store: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.close_store(store)
    }
}

/// spin-sdk 7's `spin:key-value@3.0.0`: the same stores and access rules behind
/// `async func`s, reaching the instance state through wasmtime's store accessor.
mod v3_impl {
    use wasmtime::component::{Accessor, FutureReader, Resource, StreamReader};

    use super::{KeyValue, OpenStore, TracedStore};
    use crate::capability::key_value::bindings::fermyon::spin::key_value::Error as E2;
    use crate::capability::key_value::bindings3::spin::key_value::key_value::{self as v3, Error};
    use crate::capability::{CapabilityView, Project};

    fn convert(e: E2) -> Error {
        match e {
            E2::StoreTableFull => Error::StoreTableFull,
            E2::NoSuchStore => Error::NoSuchStore,
            E2::AccessDenied => Error::AccessDenied,
            E2::Other(m) => Error::Other(m),
        }
    }

    fn backend<U>(
        store: &Accessor<U, Project<KeyValue>>,
        resource: &Resource<OpenStore>,
    ) -> Result<TracedStore, Error> {
        store.with(|mut view| {
            view.get()
                .table
                .get(resource)
                .map(|s| s.backend.clone())
                .map_err(|e| Error::Other(e.to_string()))
        })
    }

    impl v3::Host for CapabilityView<'_, KeyValue> {}

    impl v3::HostStore for CapabilityView<'_, KeyValue> {
        async fn drop(&mut self, store: Resource<OpenStore>) -> wasmtime::Result<()> {
            self.close_store(store)
        }
    }

    impl<U> v3::HostStoreWithStore<U> for Project<KeyValue> {
        async fn open(store: &Accessor<U, Self>, label: String) -> Result<Resource<OpenStore>, Error> {
            store.with(|mut view| view.get().open_store(label)).map_err(convert)
        }

        async fn get(
            store: &Accessor<U, Self>,
            this: Resource<OpenStore>,
            key: String,
        ) -> Result<Option<Vec<u8>>, Error> {
            backend(store, &this)?.get(key).await.map_err(Error::Other)
        }

        async fn set(
            store: &Accessor<U, Self>,
            this: Resource<OpenStore>,
            key: String,
            value: Vec<u8>,
        ) -> Result<(), Error> {
            backend(store, &this)?.set(key, value).await.map_err(Error::Other)
        }

        async fn delete(store: &Accessor<U, Self>, this: Resource<OpenStore>, key: String) -> Result<(), Error> {
            backend(store, &this)?.delete(key).await.map_err(Error::Other)
        }

        async fn exists(store: &Accessor<U, Self>, this: Resource<OpenStore>, key: String) -> Result<bool, Error> {
            backend(store, &this)?.exists(key).await.map_err(Error::Other)
        }

        async fn get_keys(
            store: &Accessor<U, Self>,
            this: Resource<OpenStore>,
        ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), Error>>)> {
            let listed = match backend(store, &this) {
                Ok(b) => b.get_keys().await.map_err(Error::Other),
                Err(e) => Err(e),
            };
            let (keys, outcome) = match listed {
                Ok(keys) => (keys, Ok(())),
                Err(e) => (Vec::new(), Err(e)),
            };
            store.with(|mut access| {
                let keys = StreamReader::new(&mut access, keys)?;
                let outcome = FutureReader::new(&mut access, async move { wasmtime::Result::<_>::Ok(outcome) })?;
                Ok((keys, outcome))
            })
        }
    }
}

#[cfg(test)]
mod capability_tests {
    use wasmtime::component::Resource;

    use super::*;
    use crate::capability::testing::Fixture;
    use key_value::HostStore as _;

    #[tokio::test]
    async fn an_instance_opens_only_granted_stores_and_counts_what_it_holds() {
        let fixture = Fixture::new("kv", "key_value_stores = [\"default\", \"undefined\"]");
        let mut instance = fixture.instance::<KeyValue>();
        let mut view = instance.view();
        assert!(matches!(view.open("cache".into()).await, Err(Error::AccessDenied)));
        assert!(matches!(view.open("undefined".into()).await, Err(Error::NoSuchStore)));
        let store = view.open("default".into()).await.unwrap();
        assert_eq!(view.state.open_count, 1);
        let again = || Resource::<OpenStore>::new_borrow(store.rep());
        view.set(again(), "k".into(), b"v".to_vec()).await.unwrap();
        assert_eq!(view.get(again(), "k".into()).await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(view.get_keys(again()).await.unwrap(), ["k"]);
        view.drop(store).await.unwrap();
        assert_eq!(view.state.open_count, 0);
    }
}

#[cfg(test)]
mod config_tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::Manifest;
    use crate::runtime_config::RuntimeConfig;

    fn check(runtime_config: &str, stores: &str) -> Vec<Problem> {
        let manifest = Manifest::parse(
            Path::new("spin.toml"),
            &format!(
                "spin_manifest_version = 2\n[application]\nname = \"t\"\n[component.c]\nsource = \"c.wasm\"\nkey_value_stores = {stores}\n"
            ),
        )
        .unwrap();
        let runtime_config = RuntimeConfig::from_table(Some("rc.toml".into()), toml::from_str(runtime_config).unwrap());
        KeyValue::check(&CheckContext {
            manifest: &manifest,
            runtime_config: &runtime_config,
        })
    }

    #[test]
    fn store_labels_must_be_defined_and_well_formed() {
        let problems = check(
            "[key_value_store.cache]\ntype = \"redis\"\n[key_value_store.odd]\ntype = \"memcached\"\n",
            "[\"default\", \"cache\", \"odd\", \"sessions\"]",
        );
        let found = |file: &str, key: &str, words: &str| {
            problems
                .iter()
                .any(|p| p.file == file && p.key == key && p.message.contains(words))
        };
        assert!(
            found("rc.toml", "key_value_store.cache", "missing field `url`"),
            "{problems:?}"
        );
        assert!(
            found(
                "rc.toml",
                "key_value_store.odd.type",
                "unknown variant `memcached`, expected `spin` or `redis`"
            ),
            "{problems:?}"
        );
        assert!(
            found("spin.toml", "component.c.key_value_stores", "`sessions`"),
            "{problems:?}"
        );
        assert_eq!(
            problems.len(),
            3,
            "`default` needs no definition, a bad entry is not also undefined: {problems:?}"
        );
    }

    #[test]
    fn entries_are_typed_and_synchronous_is_normal_or_full() {
        let text = "[key_value_store.default]\ntype = \"spin\"\npath = \"kv.db\"\nsynchronous = \"full\"\n\
                    [key_value_store.cache]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n\
                    [key_value_store.fast]\ntype = \"spin\"\nsynchronous = \"off\"\n";
        let runtime_config = RuntimeConfig::from_table(Some("rc.toml".into()), toml::from_str(text).unwrap());
        let (entries, problems) = STORES.read::<KeyValueStoreConfig>(&runtime_config, None);
        assert_eq!(
            entries["default"],
            KeyValueStoreConfig::Spin {
                path: Some("kv.db".into()),
                synchronous: Synchronous::Full
            }
        );
        assert_eq!(
            entries["cache"],
            KeyValueStoreConfig::Redis {
                url: "redis://127.0.0.1:6379".into()
            }
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "key_value_store.fast");
        assert!(
            problems[0]
                .message
                .contains("unknown variant `off`, expected `normal` or `full`"),
            "{problems:?}"
        );
    }
}
