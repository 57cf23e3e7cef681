//! Compare-and-swap of a JSON value in a `wasi:keyvalue` store that stays correct on
//! the Spin SpinKube ships. Spin 3.6's Redis store writes the value, then sends
//! `UNWATCH <key>`, which Redis refuses, so a swap that happened is reported as
//! `CasFailed`. Each write here carries a fresh token (`write`, beside the value's own
//! fields); when a swap reports failure, re-reading the key tells whether this write is
//! what the store now holds. A value read back with the token still parses as `T`.

use serde::{Serialize, de::DeserializeOwned};
use spin_sdk::wit::wasi::keyvalue::{atomics, store};

#[derive(Serialize)]
struct Stamped<'a, T> {
    #[serde(flatten)]
    value: &'a T,
    write: String,
}

/// A key as read for a compare-and-swap: its value (`None`: absent or not a `T`) and
/// the handle that swaps it only if nobody wrote it since.
pub struct Cell<'a, T> {
    bucket: &'a store::Bucket,
    key: &'a str,
    cas: atomics::Cas,
    current: Option<T>,
}

/// Reads `key` of `bucket` for a compare-and-swap.
pub fn read<'a, T: DeserializeOwned>(bucket: &'a store::Bucket, key: &'a str) -> Result<Cell<'a, T>, store::Error> {
    let cas = atomics::Cas::new(bucket, key)?;
    let current = cas.current()?.and_then(|bytes| serde_json::from_slice(&bytes).ok());
    Ok(Cell {
        bucket,
        key,
        cas,
        current,
    })
}

impl<T: Serialize> Cell<'_, T> {
    pub fn current(&self) -> Option<&T> {
        self.current.as_ref()
    }

    /// Stores `next` if the key still holds what was read. `Ok(false)`: someone else
    /// wrote it first.
    pub fn swap(self, next: &T) -> Result<bool, store::Error> {
        let stamped = Stamped {
            value: next,
            write: crate::new_id(),
        };
        let bytes = serde_json::to_vec(&stamped).map_err(|e| store::Error::Other(e.to_string()))?;
        match atomics::swap(self.cas, &bytes) {
            Ok(()) => Ok(true),
            // The write token is new, so the store holding these bytes means this swap
            // is the one that landed.
            Err(atomics::CasError::CasFailed(_)) => Ok(self.bucket.get(self.key)?.as_deref() == Some(&bytes[..])),
            Err(atomics::CasError::StoreError(e)) => Err(e),
        }
    }
}
