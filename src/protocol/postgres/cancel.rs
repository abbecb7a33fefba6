//! Cancel keys the gateway hands clients, and the upstream session each
//! stands for. The pid a client sees is the upstream's real backend pid
//! (so `pg_backend_pid()` and notification pids match); the secret key is
//! the gateway's own, so the upstream's key never reaches a client.
//!
//! A CancelRequest comes on a connection of its own, which Cloud Run may
//! put on any instance: each mapping is also written to the store
//! (`_cancels/PID-KEY`, in the background, so session start does not wait
//! for it), and an `.ended` marker beside it when the session ends (the
//! store is create-only). This instance's own sessions are found without
//! a store round trip. When the gateway signs recordings, the stored
//! mappings are sealed with a key derived from that signing key
//! (`cancel_seal`); without one they are stored in clear, as the README says.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::cancel_seal::Seal;
use crate::config::ConnectionConfig;
use crate::recording::{ObjectStore, RecordError};

const DIR: &str = "_cancels/";

/// Where a client's CancelRequest must go: the upstream's pid and key.
#[derive(Clone)]
pub struct CancelTarget {
    pub connection: Arc<ConnectionConfig>,
    pub pid: i32,
    pub key: i32,
    pub principal: String,
    pub audit_id: String,
}

/// A mapping as stored; the connection is named, and resolved against the
/// cancel's own connection when read.
#[derive(Serialize, Deserialize)]
struct Stored {
    connection: String,
    pid: i32,
    key: i32,
    principal: String,
    audit_id: String,
}

/// What a lookup found.
pub enum Found {
    Target(CancelTarget),
    /// Stored for another connection than the one the cancel came through.
    OtherConnection,
    /// No such key, or its session has ended.
    Unknown,
}

/// (upstream pid, gateway key) → target, for this instance's sessions.
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), CancelTarget>>,
    seal: Option<Seal>,
}

/// What the client is handed in BackendKeyData; when the session ends it
/// removes the local entry and marks the stored one ended.
pub struct CancelKey {
    registry: Arc<CancelRegistry>,
    store: Arc<dyn ObjectStore>,
    pub pid: i32,
    pub key: i32,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.map.lock() {
            m.remove(&(self.pid, self.key));
        }
        let (name, mark) = self.registry.ended(self.pid, self.key);
        let store = self.store.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.create(&name, Bytes::from(mark)).await {
                    tracing::warn!(error = %e, "could not mark a cancel key ended in the store");
                }
            });
        }
    }
}

impl CancelRegistry {
    /// A registry whose stored mappings are sealed with `seal`.
    pub fn sealed(seal: Option<Seal>) -> CancelRegistry {
        CancelRegistry {
            map: Mutex::default(),
            seal,
        }
    }

    fn object_key(&self, pid: i32, key: i32) -> String {
        match &self.seal {
            Some(s) => format!("{DIR}{}", s.name(pid, key)),
            None => format!("{DIR}{pid}-{}", key as u32),
        }
    }

    /// The `.ended` marker's name and what it holds.
    fn ended(&self, pid: i32, key: i32) -> (String, Vec<u8>) {
        let name = format!("{}.ended", self.object_key(pid, key));
        let mark = self.seal.as_ref().map(|s| s.ended_mark(&name));
        (name, mark.unwrap_or_default())
    }

    /// Registers `target` under its real pid and a fresh gateway key (two
    /// upstreams can share a pid; the key tells them apart), and writes it
    /// to `store` in the background. The key is never the upstream's own.
    pub fn register(
        self: &Arc<Self>,
        target: CancelTarget,
        store: Arc<dyn ObjectStore>,
    ) -> CancelKey {
        let pid = target.pid;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = loop {
            let key = rand::random::<i32>();
            if key == target.key {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry((pid, key)) {
                v.insert(target.clone());
                break key;
            }
        };
        let stored = Stored {
            connection: target.connection.name().to_string(),
            pid,
            key: target.key,
            principal: target.principal,
            audit_id: target.audit_id,
        };
        let (writer, name) = (store.clone(), self.object_key(pid, key));
        let bytes = serde_json::to_vec(&stored)
            .ok()
            .and_then(|json| match &self.seal {
                Some(s) => s.seal(&name, &json),
                None => Some(json),
            });
        if let Some(json) = bytes {
            tokio::spawn(async move {
                if let Err(e) = writer.create(&name, Bytes::from(json)).await {
                    tracing::warn!(error = %e, "could not store a cancel key; cancels for this session work only on this instance");
                }
            });
        }
        CancelKey {
            registry: self.clone(),
            store,
            pid,
            key,
        }
    }

    /// The session `(pid, key)` stands for: this instance's own first, then
    /// the store's, resolved against `connection` (the cancel's own).
    pub async fn lookup(
        &self,
        store: &dyn ObjectStore,
        connection: &Arc<ConnectionConfig>,
        pid: i32,
        key: i32,
    ) -> Result<Found, RecordError> {
        let local = self
            .map
            .lock()
            .ok()
            .and_then(|m| m.get(&(pid, key)).cloned());
        if let Some(t) = local {
            return Ok(match t.connection.name() == connection.name() {
                true => Found::Target(t),
                false => Found::OtherConnection,
            });
        }
        let name = self.object_key(pid, key);
        let stored = match store.get(&name).await {
            Ok(bytes) => bytes,
            Err(RecordError::NotFound(_)) => return Ok(Found::Unknown),
            Err(e) => return Err(e),
        };
        let plain = match &self.seal {
            Some(seal) => match seal.open(&name, &stored) {
                Some(p) => p,
                None => {
                    tracing::warn!(target: "custody::audit", object = %name, "a stored cancel mapping is not sealed with this gateway's key: ignored");
                    return Ok(Found::Unknown);
                }
            },
            None => stored,
        };
        let (ended, mark) = self.ended(pid, key);
        match store.get(&ended).await {
            Ok(found) if found[..] == mark[..] => return Ok(Found::Unknown),
            // A marker planted without the key ends nothing.
            Ok(_) => {
                tracing::warn!(target: "custody::audit", object = %ended, "a cancel key's end marker is not this gateway's: ignored")
            }
            Err(RecordError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let Ok(s) = serde_json::from_slice::<Stored>(&plain) else {
            return Ok(Found::Unknown);
        };
        if s.connection != connection.name() {
            return Ok(Found::OtherConnection);
        }
        Ok(Found::Target(CancelTarget {
            connection: connection.clone(),
            pid: s.pid,
            key: s.key,
            principal: s.principal,
            audit_id: s.audit_id,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pid: i32, key: i32) -> CancelTarget {
        let conn: ConnectionConfig = toml::from_str(
            "name = \"pg\"\nkind = \"postgres\"\nhost = \"h\"\nallow = [\"user:a@example.com\"]",
        )
        .expect("connection");
        CancelTarget {
            connection: Arc::new(conn),
            pid,
            key,
            principal: "user:a@example.com".into(),
            audit_id: "a1".into(),
        }
    }

    fn conn(name: &str) -> Arc<ConnectionConfig> {
        let text = format!(
            "name = \"{name}\"\nkind = \"postgres\"\nhost = \"h\"\nallow = [\"user:a@example.com\"]"
        );
        Arc::new(toml::from_str(&text).expect("connection"))
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_key_registered_on_one_instance_is_found_on_another_until_it_ends() {
        let store: Arc<dyn ObjectStore> =
            Arc::new(crate::recording::store::MemStore::new(Default::default()));
        let (a, b) = (
            Arc::new(CancelRegistry::default()),
            Arc::new(CancelRegistry::default()),
        );
        let k = a.register(target(4242, 777), store.clone());
        assert_eq!(k.pid, 4242, "the client sees the real pid");
        assert_ne!(k.key, 777, "and never the upstream's key");
        settle().await;
        let pg = conn("pg");
        for reg in [&a, &b] {
            match reg.lookup(store.as_ref(), &pg, 4242, k.key).await {
                Ok(Found::Target(t)) => {
                    assert_eq!((t.pid, t.key, t.audit_id.as_str()), (4242, 777, "a1"))
                }
                _ => panic!("found on either instance"),
            }
        }
        assert!(matches!(
            b.lookup(store.as_ref(), &pg, 4242, k.key.wrapping_add(1))
                .await,
            Ok(Found::Unknown)
        ));
        assert!(matches!(
            b.lookup(store.as_ref(), &conn("other"), 4242, k.key).await,
            Ok(Found::OtherConnection)
        ));
        let key = k.key;
        drop(k);
        settle().await;
        for reg in [&a, &b] {
            assert!(matches!(
                reg.lookup(store.as_ref(), &pg, 4242, key).await,
                Ok(Found::Unknown)
            ));
        }
    }

    #[tokio::test]
    async fn sealed_mappings_show_nothing_and_open_only_with_the_shared_key() {
        let mem = Arc::new(crate::recording::store::MemStore::new(Default::default()));
        let store: Arc<dyn ObjectStore> = mem.clone();
        let sealed = |k: &[u8]| Arc::new(CancelRegistry::sealed(Some(Seal::derive(k))));
        let (a, b, stranger) = (sealed(b"shared"), sealed(b"shared"), sealed(b"other"));
        let k = a.register(target(4242, 777), store.clone());
        settle().await;
        let objects = mem.snapshot();
        let (name, data) = objects.iter().next().expect("stored");
        assert!(
            !name.contains("4242") && !name.contains(&(k.key as u32).to_string()),
            "{name}"
        );
        let text = String::from_utf8_lossy(data);
        assert!(
            !text.contains("user:a@example.com") && !text.contains("777"),
            "{text}"
        );
        let pg = conn("pg");
        assert!(matches!(
            b.lookup(store.as_ref(), &pg, 4242, k.key).await,
            Ok(Found::Target(t)) if (t.pid, t.key) == (4242, 777)
        ));
        assert!(matches!(
            stranger.lookup(store.as_ref(), &pg, 4242, k.key).await,
            Ok(Found::Unknown)
        ));
        // A mapping planted in clear under a sealed name is not believed,
        // and neither is an end marker planted without the key.
        let planted = a.object_key(1, 2);
        let clear = br#"{"connection":"pg","pid":1,"key":3,"principal":"x","audit_id":"y"}"#;
        store
            .create(&planted, Bytes::from_static(clear))
            .await
            .unwrap();
        assert!(matches!(
            b.lookup(store.as_ref(), &pg, 1, 2).await,
            Ok(Found::Unknown)
        ));
        let (ended, _) = a.ended(4242, k.key);
        store.create(&ended, Bytes::from_static(b"")).await.unwrap();
        assert!(matches!(
            b.lookup(store.as_ref(), &pg, 4242, k.key).await,
            Ok(Found::Target(_))
        ));
    }

    #[tokio::test]
    async fn a_sealed_key_ends_with_its_session() {
        let store: Arc<dyn ObjectStore> =
            Arc::new(crate::recording::store::MemStore::new(Default::default()));
        let seal = |k: &[u8]| Arc::new(CancelRegistry::sealed(Some(Seal::derive(k))));
        let (a, b) = (seal(b"shared"), seal(b"shared"));
        let k = a.register(target(9, 10), store.clone());
        let key = k.key;
        settle().await;
        drop(k);
        settle().await;
        assert!(matches!(
            b.lookup(store.as_ref(), &conn("pg"), 9, key).await,
            Ok(Found::Unknown)
        ));
    }
}
