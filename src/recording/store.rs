//! Where recordings live: a write-once object store. Segments and manifests
//! are only ever created, never rewritten, so a GCS bucket that grants
//! objectCreator (not objectAdmin) is enough and one write per object keeps
//! within GCS's one-write-per-second-per-object rule.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::RecordError;

pub trait ObjectStore: Send + Sync {
    /// Creates `key`; `RecordError::Exists` rather than replace an object.
    fn create<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), RecordError>>;
    /// `RecordError::NotFound` when absent.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, RecordError>>;
    /// Keys directly inside the folder `dir` (which ends in '/'), sorted.
    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, RecordError>>;
    /// Folders directly inside `dir`, each ending in '/', sorted.
    fn list_dirs<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, RecordError>>;
    /// The store's URL, for messages.
    fn url(&self) -> String;
}

/// Opens `file://DIR` or `gs://BUCKET/PREFIX`; `endpoint` overrides the GCS API root.
pub async fn open_store(
    url: &str,
    endpoint: Option<&str>,
) -> Result<Arc<dyn ObjectStore>, RecordError> {
    if let Some(dir) = url.strip_prefix("file://") {
        if dir.is_empty() {
            return Err(RecordError::Unsupported(url.to_string()));
        }
        return Ok(Arc::new(FileStore {
            root: PathBuf::from(dir),
        }));
    }
    if let Some(rest) = url.strip_prefix("gs://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(RecordError::Unsupported(url.to_string()));
        }
        let store = super::gcs::GcsStore::new(bucket, prefix, endpoint).await?;
        return Ok(Arc::new(store));
    }
    Err(RecordError::Unsupported(url.to_string()))
}

/// Audit ids become object names: only the characters Custody generates.
pub fn check_id(audit_id: &str) -> Result<(), RecordError> {
    let ok = !audit_id.is_empty()
        && audit_id.len() <= 64
        && audit_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(RecordError::BadId(audit_id.to_string()))
    }
}

/// `YYYY/MM/DD/AUDIT_ID/`, dated by the UUIDv7 audit id itself so any tool
/// can find a recording from its id alone.
pub fn record_dir(audit_id: &str) -> String {
    let date = uuid::Uuid::parse_str(audit_id)
        .ok()
        .and_then(|u| u.get_timestamp())
        .and_then(|ts| {
            let (secs, _) = ts.to_unix();
            chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)
        });
    match date {
        Some(d) => format!("{}/{audit_id}/", d.format("%Y/%m/%d")),
        None => format!("undated/{audit_id}/"),
    }
}

pub fn segment_key(audit_id: &str, n: u32) -> String {
    format!("{}{n:06}.jsonl", record_dir(audit_id))
}

pub fn manifest_key(audit_id: &str) -> String {
    format!("{}manifest.json", record_dir(audit_id))
}

/// A directory tree with the same keys as the bucket.
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    fn io(&self, path: &std::path::Path, source: std::io::Error) -> RecordError {
        RecordError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

impl FileStore {
    /// Files (or, with `dirs`, folders ending in '/') directly inside `dir`, sorted.
    async fn entries(&self, dir: &str, dirs: bool) -> Result<Vec<String>, RecordError> {
        let path = self.root.join(dir);
        let mut rd = match tokio::fs::read_dir(&path).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(&path, e)),
        };
        let mut out = Vec::new();
        while let Some(entry) = rd.next_entry().await.map_err(|e| self.io(&path, e))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type().await.is_ok_and(|t| t.is_dir());
            if is_dir != dirs || name.starts_with(".tmp-") {
                continue;
            }
            out.push(if dirs {
                format!("{dir}{name}/")
            } else {
                format!("{dir}{name}")
            });
        }
        out.sort();
        Ok(out)
    }
}

impl ObjectStore for FileStore {
    fn create<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), RecordError>> {
        Box::pin(async move {
            let path = self.root.join(key);
            let dir = path.parent().unwrap_or(&self.root).to_path_buf();
            let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::now_v7()));
            let (p, t) = (path.clone(), tmp.clone());
            // Written aside, synced, then hard-linked into place: readers never
            // see half an object, and an existing one is never replaced.
            let done = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                use std::io::Write;
                std::fs::create_dir_all(&dir)?;
                let mut f = std::fs::File::create(&t)?;
                f.write_all(&data)?;
                f.sync_all()?;
                let linked = std::fs::hard_link(&t, &p);
                let _ = std::fs::remove_file(&t);
                linked
            })
            .await
            .map_err(|e| RecordError::Stopped(e.to_string()))?;
            match done {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(RecordError::Exists(key.to_string()))
                }
                Err(e) => Err(self.io(&tmp, e)),
            }
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, RecordError>> {
        Box::pin(async move {
            let path = self.root.join(key);
            match tokio::fs::read(&path).await {
                Ok(b) => Ok(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(RecordError::NotFound(key.to_string()))
                }
                Err(e) => Err(self.io(&path, e)),
            }
        })
    }

    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, RecordError>> {
        Box::pin(async move { self.entries(dir, false).await })
    }

    fn list_dirs<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, RecordError>> {
        Box::pin(async move { self.entries(dir, true).await })
    }

    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_dated_by_their_uuid7_id() {
        let id = "019ad4d2-6f4e-7c3a-9a6b-0123456789ab";
        let dir = record_dir(id);
        assert!(
            dir.starts_with("2025/") && dir.ends_with(&format!("/{id}/")),
            "{dir}"
        );
        assert_eq!(record_dir("a1"), "undated/a1/");
        assert!(check_id("../etc").is_err());
        assert!(check_id(id).is_ok());
    }

    #[tokio::test]
    async fn file_store_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&format!("file://{}", dir.path().display()), None)
            .await
            .unwrap();
        store
            .create("a/b/1", Bytes::from_static(b"one"))
            .await
            .unwrap();
        let again = store.create("a/b/1", Bytes::from_static(b"two")).await;
        assert!(matches!(again, Err(RecordError::Exists(_))), "{again:?}");
        assert_eq!(store.get("a/b/1").await.unwrap(), b"one");
        assert_eq!(store.list("a/b/").await.unwrap(), vec!["a/b/1".to_string()]);
        assert!(matches!(
            store.get("a/b/2").await,
            Err(RecordError::NotFound(_))
        ));
    }
}
