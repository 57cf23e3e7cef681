//! `wasi:keyvalue@0.2.0-draft2` (store, atomics, batch) over the same labelled stores
//! and access rules as Spin's key-value API: a bucket identifier is a store label.
//!
//! `list-keys` returns every key at once with no cursor, as Spin does. A swap that
//! loses the race hands back a fresh `cas` holding the value now stored, so the guest
//! can retry from `current()`.

use wasmtime::component::Resource;

use super::bindings::fermyon::spin::key_value::Error as SpinError;
use super::wasi_bindings::wasi::keyvalue::{atomics, batch, store};
use super::{KeyValue, OpenStore, TracedStore};
use crate::capability::CapabilityView;
use store::{Error, KeyResponse};

/// A `cas` handle: the key and the value it held when the handle was made.
pub struct PendingSwap {
    backend: TracedStore,
    key: String,
    expected: Option<Vec<u8>>,
}

fn other(e: impl ToString) -> Error {
    Error::Other(e.to_string())
}

impl CapabilityView<'_, KeyValue> {
    fn bucket(&self, bucket: &Resource<OpenStore>) -> Result<TracedStore, Error> {
        self.table.get(bucket).map(|s| s.backend.clone()).map_err(other)
    }

    /// Reads `key` now and keeps what it held for a later swap.
    async fn pending_swap(&mut self, backend: TracedStore, key: String) -> Result<Resource<PendingSwap>, Error> {
        let expected = backend.get(key.clone()).await.map_err(other)?;
        self.table.push(PendingSwap { backend, key, expected }).map_err(other)
    }
}

impl store::Host for CapabilityView<'_, KeyValue> {
    async fn open(&mut self, identifier: String) -> Result<Resource<OpenStore>, Error> {
        self.open_store(identifier).map_err(|e| match e {
            SpinError::NoSuchStore => Error::NoSuchStore,
            SpinError::AccessDenied => Error::AccessDenied,
            SpinError::StoreTableFull => Error::Other("too many open buckets".into()),
            SpinError::Other(m) => Error::Other(m),
        })
    }
}

impl store::HostBucket for CapabilityView<'_, KeyValue> {
    async fn get(&mut self, bucket: Resource<OpenStore>, key: String) -> Result<Option<Vec<u8>>, Error> {
        self.bucket(&bucket)?.get(key).await.map_err(other)
    }

    async fn set(&mut self, bucket: Resource<OpenStore>, key: String, value: Vec<u8>) -> Result<(), Error> {
        self.bucket(&bucket)?.set(key, value).await.map_err(other)
    }

    async fn delete(&mut self, bucket: Resource<OpenStore>, key: String) -> Result<(), Error> {
        self.bucket(&bucket)?.delete(key).await.map_err(other)
    }

    async fn exists(&mut self, bucket: Resource<OpenStore>, key: String) -> Result<bool, Error> {
        self.bucket(&bucket)?.exists(key).await.map_err(other)
    }

    async fn list_keys(&mut self, bucket: Resource<OpenStore>, _cursor: Option<String>) -> Result<KeyResponse, Error> {
        let keys = self.bucket(&bucket)?.get_keys().await.map_err(other)?;
        Ok(KeyResponse { keys, cursor: None })
    }

    async fn drop(&mut self, bucket: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.close_store(bucket)
    }
}

impl atomics::Host for CapabilityView<'_, KeyValue> {
    async fn increment(&mut self, bucket: Resource<OpenStore>, key: String, delta: i64) -> Result<i64, Error> {
        self.bucket(&bucket)?.increment(key, delta).await.map_err(other)
    }

    async fn swap(
        &mut self,
        cas: Resource<PendingSwap>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let PendingSwap { backend, key, expected } = self.table.delete(cas)?;
        match backend.compare_and_swap(key.clone(), expected, value).await {
            Ok(true) => Ok(Ok(())),
            Ok(false) => Ok(Err(match self.pending_swap(backend, key).await {
                Ok(fresh) => atomics::CasError::CasFailed(fresh),
                Err(e) => atomics::CasError::StoreError(e),
            })),
            Err(e) => Ok(Err(atomics::CasError::StoreError(other(e)))),
        }
    }
}

impl atomics::HostCas for CapabilityView<'_, KeyValue> {
    async fn new(&mut self, bucket: Resource<OpenStore>, key: String) -> Result<Resource<PendingSwap>, Error> {
        let backend = self.bucket(&bucket)?;
        self.pending_swap(backend, key).await
    }

    async fn current(&mut self, cas: Resource<PendingSwap>) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.table.get(&cas).map_err(other)?.expected.clone())
    }

    async fn drop(&mut self, cas: Resource<PendingSwap>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for CapabilityView<'_, KeyValue> {
    async fn get_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, Error> {
        let backend = self.bucket(&bucket)?;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let value = backend.get(key.clone()).await.map_err(other)?;
            values.push((key, value));
        }
        Ok(values)
    }

    async fn set_many(&mut self, bucket: Resource<OpenStore>, key_values: Vec<(String, Vec<u8>)>) -> Result<(), Error> {
        let backend = self.bucket(&bucket)?;
        for (key, value) in key_values {
            backend.set(key, value).await.map_err(other)?;
        }
        Ok(())
    }

    async fn delete_many(&mut self, bucket: Resource<OpenStore>, keys: Vec<String>) -> Result<(), Error> {
        let backend = self.bucket(&bucket)?;
        for key in keys {
            backend.delete(key).await.map_err(other)?;
        }
        Ok(())
    }
}
