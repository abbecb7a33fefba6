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
    /// Every object whose key starts with `dir` (which ends in '/'), at any
    /// depth, sorted, hiding nothing (not even a file store's temporary
    /// files): `verify` must see all that a reader of the prefix could.
    fn list_all<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, RecordError>>;
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
    format!("{}{}", record_dir(audit_id), segment_name(n))
}

/// The one spelling of segment `n`'s object name.
pub fn segment_name(n: u32) -> String {
    format!("{n:06}.jsonl")
}

/// The number of a segment named exactly as `segment_name` spells it;
/// None for any other spelling ("00002.jsonl", "+00002.jsonl", "0000002.jsonl"),
/// so one number can never have two objects.
pub fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".jsonl")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    (n >= 1 && segment_name(n) == name).then_some(n)
}

pub const MANIFEST_NAME: &str = "manifest.json";

pub fn manifest_key(audit_id: &str) -> String {
    format!("{}{MANIFEST_NAME}", record_dir(audit_id))
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

/// Every file under `path` (keys prefixed with `key`), depth first.
fn walk(path: &std::path::Path, key: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    let rd = match std::fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), &format!("{key}{name}/"), out)?;
        } else {
            out.push(format!("{key}{name}"));
        }
    }
    Ok(())
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

    fn list_all<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, RecordError>> {
        Box::pin(async move {
            let path = self.root.join(dir);
            let (p, d) = (path.clone(), dir.to_string());
            let listed = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                walk(&p, &d, &mut out).map(|()| out)
            })
            .await
            .map_err(|e| RecordError::Stopped(e.to_string()))?;
            let mut out = listed.map_err(|e| self.io(&path, e))?;
            out.sort();
            Ok(out)
        })
    }

    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

/// Objects in memory with a bucket's list semantics: for tests and fuzzing.
#[derive(Default)]
pub struct MemStore {
    pub objects: std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>,
}

impl MemStore {
    pub fn new(objects: std::collections::BTreeMap<String, Vec<u8>>) -> MemStore {
        MemStore {
            objects: std::sync::Mutex::new(objects),
        }
    }

    /// A copy of every object.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, Vec<u8>> {
        self.objects.lock().map(|o| o.clone()).unwrap_or_default()
    }

    fn keys(&self, dir: &str) -> Vec<String> {
        let objects = self.snapshot();
        objects
            .keys()
            .filter(|k| k.starts_with(dir))
            .cloned()
            .collect()
    }
}

impl ObjectStore for MemStore {
    fn create<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), RecordError>> {
        Box::pin(async move {
            let mut objects = self
                .objects
                .lock()
                .map_err(|e| RecordError::Stopped(e.to_string()))?;
            if objects.contains_key(key) {
                return Err(RecordError::Exists(key.to_string()));
            }
            objects.insert(key.to_string(), data.to_vec());
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, RecordError>> {
        Box::pin(async move {
            let objects = self
                .objects
                .lock()
                .map_err(|e| RecordError::Stopped(e.to_string()))?;
            objects
                .get(key)
                .cloned()
                .ok_or_else(|| RecordError::NotFound(key.to_string()))
        })
    }

    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, RecordError>> {
        Box::pin(async move {
            let keys = self.keys(dir);
            Ok(keys
                .into_iter()
                .filter(|k| !k[dir.len()..].contains('/'))
                .collect())
        })
    }

    fn list_dirs<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, RecordError>> {
        Box::pin(async move {
            let mut dirs: Vec<String> = self
                .keys(dir)
                .iter()
                .filter_map(|k| {
                    let rest = &k[dir.len()..];
                    rest.find('/').map(|i| format!("{dir}{}", &rest[..=i]))
                })
                .collect();
            dirs.dedup();
            Ok(dirs)
        })
    }

    fn list_all<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, RecordError>> {
        Box::pin(async move { Ok(self.keys(dir)) })
    }

    fn url(&self) -> String {
        "mem://".to_string()
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

    #[test]
    fn one_spelling_per_segment_number() {
        assert_eq!(parse_segment_name("000002.jsonl"), Some(2));
        assert_eq!(parse_segment_name(&segment_name(1234567)), Some(1234567));
        for other in [
            "00002.jsonl",
            "0000002.jsonl",
            "+00002.jsonl",
            "000000.jsonl",
            "000002.JSONL",
            "000002.jsonl ",
            " 000002.jsonl",
            "0001234567.jsonl",
            "٠٠٠٠٠٢.jsonl",
            "000002",
            ".jsonl",
        ] {
            assert_eq!(parse_segment_name(other), None, "{other}");
        }
    }

    /// list_all sees nested objects and the file store's own temporary files.
    #[tokio::test]
    async fn list_all_hides_nothing_in_either_store() {
        let dir = tempfile::tempdir().unwrap();
        let file = open_store(&format!("file://{}", dir.path().display()), None)
            .await
            .unwrap();
        let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::default());
        for store in [file, mem] {
            for key in ["r/1", "r/x/2", "r/.tmp-3", "s/4"] {
                store.create(key, Bytes::from_static(b"b")).await.unwrap();
            }
            assert_eq!(
                store.list_all("r/").await.unwrap(),
                vec!["r/.tmp-3", "r/1", "r/x/2"],
                "{}",
                store.url()
            );
            assert_eq!(store.list_dirs("r/").await.unwrap(), vec!["r/x/"]);
        }
    }
}
