//! Revocation records live in the recording store (`_revocations/MEMBER`),
//! so every stateless instance agrees; each instance rereads the list at
//! most every 5 s. A store it cannot read refuses requests (fail closed).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::recording::{ObjectStore, RecordError};

const DIR: &str = "_revocations/";
/// How stale an instance's view of revocations may be.
pub const CACHE: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Revocations {
    cache: tokio::sync::Mutex<Option<(Instant, HashSet<String>)>>,
}

impl Revocations {
    /// Revoked members (lower-case), at most `CACHE` old.
    pub async fn current(&self, store: &dyn ObjectStore) -> Result<HashSet<String>, RecordError> {
        let mut cache = self.cache.lock().await;
        if let Some((at, set)) = cache.as_ref() {
            if at.elapsed() < CACHE {
                return Ok(set.clone());
            }
        }
        let set: HashSet<String> = store
            .list(DIR)
            .await?
            .into_iter()
            .filter_map(|k| k.strip_prefix(DIR).map(|m| m.to_ascii_lowercase()))
            .collect();
        *cache = Some((Instant::now(), set.clone()));
        Ok(set)
    }

    /// The first revoked member of `members`, if any.
    pub async fn first_revoked(
        &self,
        store: &dyn ObjectStore,
        members: &[String],
    ) -> Result<Option<String>, RecordError> {
        let set = self.current(store).await?;
        Ok(members
            .iter()
            .find(|m| set.contains(&m.to_ascii_lowercase()))
            .cloned())
    }

    /// Writes the record; false when the member was already revoked.
    pub async fn revoke(
        &self,
        store: &dyn ObjectStore,
        member: &str,
        record: &serde_json::Value,
    ) -> Result<bool, RecordError> {
        let key = format!("{DIR}{}", member.to_ascii_lowercase());
        let created = match store.create(&key, Bytes::from(record.to_string())).await {
            Ok(()) => true,
            Err(RecordError::Exists(_)) => false,
            Err(e) => return Err(e),
        };
        *self.cache.lock().await = None;
        Ok(created)
    }
}
