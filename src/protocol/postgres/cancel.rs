//! Cancel keys the gateway hands clients, and the upstream session each
//! stands for. The pid a client sees is the upstream's real backend pid
//! (so `pg_backend_pid()` and notification pids match); the secret key is
//! the gateway's own, so the upstream's key never leaves the gateway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::ConnectionConfig;

/// Where a client's CancelRequest must go: the upstream's pid and key.
#[derive(Clone)]
pub struct CancelTarget {
    pub connection: Arc<ConnectionConfig>,
    pub pid: i32,
    pub key: i32,
    pub principal: String,
    pub audit_id: String,
}

/// (upstream pid, gateway key) → target. Only `register` and `lookup`
/// touch it, so it can move to a shared store.
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

/// What the client is handed in BackendKeyData; removes its entry when
/// the session ends.
pub struct CancelKey {
    registry: Arc<CancelRegistry>,
    pub pid: i32,
    pub key: i32,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.map.lock() {
            m.remove(&(self.pid, self.key));
        }
    }
}

impl CancelRegistry {
    /// Registers `target` under its real pid and a fresh gateway key (two
    /// upstreams can share a pid; the key tells them apart). The key is
    /// never the upstream's own.
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> CancelKey {
        let pid = target.pid;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let key = rand::random::<i32>();
            if key == target.key {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry((pid, key)) {
                v.insert(target);
                return CancelKey {
                    registry: self.clone(),
                    pid,
                    key,
                };
            }
        }
    }

    pub fn lookup(&self, pid: i32, key: i32) -> Option<CancelTarget> {
        self.map.lock().ok()?.get(&(pid, key)).cloned()
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

    #[test]
    fn the_client_sees_the_real_pid_and_a_gateway_key() {
        let reg = Arc::new(CancelRegistry::default());
        let k = reg.register(target(4242, 777));
        assert_eq!(k.pid, 4242);
        let t = reg.lookup(4242, k.key).expect("registered");
        assert_eq!((t.pid, t.key), (4242, 777));
        assert!(reg.lookup(4242, k.key.wrapping_add(1)).is_none());
        let key = k.key;
        drop(k);
        assert!(reg.lookup(4242, key).is_none());
    }
}
