//! Cancel keys the gateway hands clients, and the upstream session each
//! stands for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::ConnectionConfig;

/// Where a client's CancelRequest must go. Keys are the ones the gateway
/// handed the client; the upstream's own key never leaves the gateway.
#[derive(Clone)]
pub struct CancelTarget {
    pub connection: Arc<ConnectionConfig>,
    pub pid: i32,
    pub key: i32,
    pub principal: String,
    pub audit_id: String,
}

#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

/// Removes its entry when the session ends.
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
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> CancelKey {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let (pid, key) = (rand::random::<i32>() & 0x7fff_ffff, rand::random::<i32>());
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
