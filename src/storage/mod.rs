//! Storage: local paths, S3 and HTTP(S) through object_store, with retries and a local read-through cache.
//!
//! Everything that reads a dataset goes through [`Storage`]: label files are read whole ([`Storage::read`]),
//! media files are made local ([`Storage::local`]: a local path as is, a remote object through the cache),
//! folders are listed ([`Storage::list`]). Remote reads retry with exponential backoff and then fail naming
//! the URI, the attempts and what to check.

pub mod cache;
pub mod fs;
pub mod location;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use serde::{Deserialize, Serialize};

pub use cache::ReadCache;
pub use fs::{WriteError, cache_root, write_atomic, write_atomic_with};
pub use location::{Location, LocationError};

/// Storage options (`[storage]` in a recipe). Credentials come from the standard AWS environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
/// `AWS_ALLOW_HTTP`); the options here override the environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// S3-compatible endpoint (MinIO, Ceph, moto, ...), e.g. `http://127.0.0.1:9000`; empty = AWS (or
    /// `AWS_ENDPOINT_URL`).
    pub endpoint: String,
    /// S3 region; empty = `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: String,
    /// Virtual-hosted-style requests (`bucket.host`); path-style (`host/bucket`) otherwise, which
    /// S3-compatible servers expect.
    pub virtual_hosted: bool,
    /// Allow plain `http://` endpoints.
    pub allow_http: bool,
    /// Unsigned requests (public buckets).
    pub anonymous: bool,
    /// Attempts after the first failed one, for each remote request.
    pub retries: usize,
    /// First backoff; doubled after each failure up to `retry_max_backoff_s`.
    pub retry_backoff_s: f64,
    pub retry_max_backoff_s: f64,
    /// Timeout of one request.
    pub timeout_s: f64,
    /// Bound on the local read-through cache of remote media (GB, 10^9 bytes).
    pub cache_max_gb: f64,
    /// Parallel downloads when prefetching.
    pub prefetch: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            endpoint: String::new(),
            region: String::new(),
            virtual_hosted: false,
            allow_http: false,
            anonymous: false,
            retries: 5,
            retry_backoff_s: 0.5,
            retry_max_backoff_s: 8.0,
            timeout_s: 60.0,
            cache_max_gb: 50.0,
            prefetch: 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{uri}: not found")]
    NotFound { uri: String },
    #[error("{uri}: access denied ({message}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or [storage] anonymous")]
    Denied { uri: String, message: String },
    #[error("{uri}: failed after {attempts} attempts over {seconds:.1} s: {message}; check that the server is reachable ([storage] endpoint, AWS_ENDPOINT_URL) and try again (cached files are kept)")]
    Unavailable { uri: String, attempts: usize, seconds: f64, message: String },
    #[error("{uri}: {message}")]
    Config { uri: String, message: String },
    #[error("{uri}: listing needs a server that supports it ({message}); name the files in the dataset card instead")]
    List { uri: String, message: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Location(#[from] LocationError),
}

impl StorageError {
    /// The storage could not be reached (retries exhausted), as opposed to a missing or denied file.
    pub fn is_outage(&self) -> bool {
        matches!(self, StorageError::Unavailable { .. })
    }
}

/// An object found by listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub location: Location,
    pub size: u64,
}

/// Local and remote storage with a read-through cache. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Storage {
    cfg: StorageConfig,
    runtime: tokio::runtime::Runtime,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    cache: ReadCache,
}

impl Storage {
    /// `cache_root` is emollama's cache directory; remote objects go to `<cache_root>/objects`.
    pub fn new(cfg: StorageConfig, cache_root: &Path) -> Result<Arc<Self>, StorageError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("emollama-storage")
            .enable_all()
            .build()
            .map_err(|source| StorageError::Io { path: "tokio runtime".into(), source })?;
        let max = (cfg.cache_max_gb.max(0.0) * 1e9) as u64;
        Ok(Arc::new(Storage { cache: ReadCache::new(cache_root.join("objects"), max), cfg, runtime, stores: Mutex::new(HashMap::new()) }))
    }

    pub fn config(&self) -> &StorageConfig {
        &self.cfg
    }

    pub fn cache(&self) -> &ReadCache {
        &self.cache
    }

    /// The object store and object path of a remote location.
    fn store(&self, loc: &Location) -> Result<(Arc<dyn ObjectStore>, ObjectPath), StorageError> {
        let config_err = |message: String| StorageError::Config { uri: loc.to_string(), message };
        let (store_key, path) = match loc {
            Location::Local(_) => return Err(config_err("a local path has no object store".into())),
            Location::S3 { bucket, key } => (format!("s3://{bucket}"), key.clone()),
            Location::Http(url) => http_origin(url).map_err(config_err)?,
        };
        let mut stores = self.stores.lock().map_err(|_| config_err("storage lock poisoned".into()))?;
        if let Some(s) = stores.get(&store_key) {
            return Ok((s.clone(), ObjectPath::from(path)));
        }
        let timeout = Duration::from_secs_f64(self.cfg.timeout_s.max(0.1));
        let mut options = ClientOptions::new().with_timeout(timeout).with_connect_timeout(timeout.min(Duration::from_secs(10)));
        // Plain HTTP when asked, or when the endpoint (recipe or standard environment) says http://.
        let env = |k: &str| std::env::var(k).unwrap_or_default();
        let env_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"].iter().map(|k| env(k)).find(|v| !v.is_empty()).unwrap_or_default();
        let http_endpoint = if self.cfg.endpoint.is_empty() { env_endpoint.starts_with("http://") } else { self.cfg.endpoint.starts_with("http://") };
        if self.cfg.allow_http || http_endpoint || env("AWS_ALLOW_HTTP").eq_ignore_ascii_case("true") || store_key.starts_with("http://") {
            options = options.with_allow_http(true);
        }
        // Our own loop retries (and logs) every request; the client's would hide the attempts.
        let retry = RetryConfig { max_retries: 0, ..Default::default() };
        let store: Arc<dyn ObjectStore> = match loc {
            Location::S3 { bucket, .. } => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry).with_client_options(options);
                if !self.cfg.endpoint.is_empty() {
                    b = b.with_endpoint(&self.cfg.endpoint);
                }
                let region = if !self.cfg.region.is_empty() {
                    self.cfg.region.clone()
                } else {
                    std::env::var("AWS_REGION").or_else(|_| std::env::var("AWS_DEFAULT_REGION")).unwrap_or_else(|_| "us-east-1".into())
                };
                b = b.with_region(region).with_virtual_hosted_style_request(self.cfg.virtual_hosted);
                if self.cfg.anonymous {
                    b = b.with_skip_signature(true);
                }
                Arc::new(b.build().map_err(|e| config_err(e.to_string()))?)
            }
            _ => Arc::new(object_store::http::HttpBuilder::new().with_url(&store_key).with_retry(retry).with_client_options(options).build().map_err(|e| config_err(e.to_string()))?),
        };
        stores.insert(store_key, store.clone());
        Ok((store, ObjectPath::from(path)))
    }

    /// Runs `op` with retries and exponential backoff on errors other than not-found / denied.
    fn retrying<T, F, Fut>(&self, loc: &Location, what: &str, op: F) -> Result<T, StorageError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, object_store::Error>>,
    {
        let uri = loc.to_string();
        let start = Instant::now();
        let mut backoff = self.cfg.retry_backoff_s.max(0.0);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.runtime.block_on(op()) {
                Ok(v) => {
                    if attempt > 1 {
                        tracing::info!(uri, attempt, "{what} succeeded after retrying");
                    }
                    return Ok(v);
                }
                Err(object_store::Error::NotFound { .. }) => return Err(StorageError::NotFound { uri }),
                Err(e @ (object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. })) => {
                    return Err(StorageError::Denied { uri, message: e.to_string() });
                }
                Err(e) if attempt > self.cfg.retries => {
                    return Err(StorageError::Unavailable { uri, attempts: attempt, seconds: start.elapsed().as_secs_f64(), message: one_line(&e) });
                }
                Err(e) => {
                    tracing::warn!(uri, attempt, retries = self.cfg.retries, backoff_s = backoff, error = %one_line(&e), "{what} failed; retrying");
                    std::thread::sleep(Duration::from_secs_f64(backoff));
                    backoff = (backoff * 2.0).min(self.cfg.retry_max_backoff_s.max(backoff));
                }
            }
        }
    }

    /// The whole content of a file (label lists, manifests). Not cached: these are small and may change.
    pub fn read(&self, loc: &Location) -> Result<Vec<u8>, StorageError> {
        if let Location::Local(p) = loc {
            return std::fs::read(p).map_err(|e| local_err(p, e));
        }
        let (store, path) = self.store(loc)?;
        let bytes = self.retrying(loc, "read", || {
            let (store, path) = (store.clone(), path.clone());
            async move { store.get(&path).await?.bytes().await }
        })?;
        Ok(bytes.to_vec())
    }

    /// Size of a file, or None when it does not exist.
    pub fn size(&self, loc: &Location) -> Result<Option<u64>, StorageError> {
        if let Location::Local(p) = loc {
            return Ok(std::fs::metadata(p).ok().filter(|m| m.is_file()).map(|m| m.len()));
        }
        let (store, path) = self.store(loc)?;
        match self.retrying(loc, "head", || {
            let (store, path) = (store.clone(), path.clone());
            async move { store.head(&path).await }
        }) {
            Ok(m) => Ok(Some(m.size)),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A local path with the content of `loc`: the path itself when local, else the cached copy
    /// (fetched on first use).
    pub fn local(&self, loc: &Location) -> Result<PathBuf, StorageError> {
        if let Location::Local(p) = loc {
            return Ok(p.clone());
        }
        let uri = loc.to_string();
        if let Some((path, _)) = self.cache.get(&uri) {
            return Ok(path);
        }
        let (store, path) = self.store(loc)?;
        let (bytes, etag) = self.retrying(loc, "download", || {
            let (store, path) = (store.clone(), path.clone());
            async move {
                let r = store.get(&path).await?;
                let etag = r.meta.e_tag.clone();
                let expected = r.meta.size;
                let bytes = r.bytes().await?;
                if bytes.len() as u64 != expected {
                    return Err(object_store::Error::Generic { store: "download", source: format!("got {} of {expected} bytes", bytes.len()).into() });
                }
                Ok((bytes, etag))
            }
        })?;
        self.cache.put(&uri, &bytes, etag).map_err(|e| StorageError::Io { path: self.cache.path(&uri).display().to_string(), source: e })
    }

    /// Makes every location local (remote ones fetched `prefetch` at a time), in order, each with its
    /// own result.
    pub fn prefetch(&self, locs: &[Location], progress: Option<&indicatif::ProgressBar>) -> Vec<Result<PathBuf, StorageError>> {
        let workers = self.cfg.prefetch.clamp(1, 64);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<PathBuf, StorageError>>>> = Mutex::new((0..locs.len()).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..workers.min(locs.len().max(1)) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(loc) = locs.get(i) else { break };
                        let r = self.local(loc);
                        if let Ok(mut g) = results.lock() {
                            g[i] = Some(r);
                        }
                        if let Some(p) = progress {
                            p.inc(1);
                        }
                    }
                });
            }
        });
        results
            .into_inner()
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StorageError::Config { uri: String::new(), message: "not fetched".into() })))
            .collect()
    }

    /// Files below a folder, recursively, sorted by location.
    pub fn list(&self, loc: &Location) -> Result<Vec<Entry>, StorageError> {
        if let Location::Local(dir) = loc {
            let mut out = Vec::new();
            let mut stack = vec![dir.clone()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).map_err(|e| local_err(&d, e))?.flatten() {
                    let p = e.path();
                    let m = std::fs::metadata(&p).map_err(|e| local_err(&p, e))?;
                    if m.is_dir() {
                        stack.push(p);
                    } else {
                        out.push(Entry { location: Location::Local(p), size: m.len() });
                    }
                }
            }
            out.sort_by(|a, b| a.location.cmp(&b.location));
            return Ok(out);
        }
        let (store, prefix) = self.store(loc)?;
        let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
        let listed = self.retrying(loc, "list", || {
            let (store, prefix) = (store.clone(), prefix.clone());
            async move { store.list(prefix.as_ref()).try_collect::<Vec<_>>().await }
        });
        let metas = match (listed, loc) {
            (Ok(m), _) => m,
            (Err(StorageError::Unavailable { message, .. }), Location::Http(_)) => return Err(StorageError::List { uri: loc.to_string(), message }),
            (Err(e), _) => return Err(e),
        };
        let root = match loc {
            Location::S3 { bucket, .. } => Location::S3 { bucket: bucket.clone(), key: String::new() },
            Location::Http(url) => Location::Http(http_origin(url).map_err(|message| StorageError::Config { uri: url.clone(), message })?.0),
            Location::Local(_) => unreachable!("handled above"),
        };
        let mut out: Vec<Entry> = metas.into_iter().filter_map(|m| root.join(m.location.as_ref()).ok().map(|location| Entry { location, size: m.size })).collect();
        out.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(out)
    }

    /// Writes a file (local or S3): used by `data push` and tests.
    pub fn write(&self, loc: &Location, bytes: Vec<u8>) -> Result<(), StorageError> {
        if let Location::Local(p) = loc {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| local_err(parent, e))?;
            }
            return std::fs::write(p, bytes).map_err(|e| local_err(p, e));
        }
        let (store, path) = self.store(loc)?;
        let payload = bytes::Bytes::from(bytes);
        self.retrying(loc, "upload", || {
            let (store, path, payload) = (store.clone(), path.clone(), payload.clone());
            async move { store.put(&path, payload.into()).await.map(|_| ()) }
        })
    }

    /// Uploads a local folder's files below `dest` (relative layout kept), `prefetch` at a time.
    pub fn push_dir(&self, dir: &Path, dest: &Location, progress: Option<&indicatif::ProgressBar>) -> Result<usize, StorageError> {
        let files = self.list(&Location::Local(dir.to_path_buf()))?;
        if let Some(p) = progress {
            p.set_length(files.len() as u64);
        }
        let jobs: Vec<(PathBuf, Location)> = files
            .iter()
            .filter_map(|e| e.location.as_local().map(Path::to_path_buf))
            .map(|p| {
                let rel = p.strip_prefix(dir).unwrap_or(&p).to_string_lossy().replace('\\', "/");
                dest.join(&rel).map(|l| (p, l))
            })
            .collect::<Result<_, _>>()?;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed: Mutex<Option<StorageError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..self.cfg.prefetch.clamp(1, 64).min(jobs.len().max(1)) {
                s.spawn(|| {
                    while let Some((p, l)) = jobs.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        let r = std::fs::read(p).map_err(|e| local_err(p, e)).and_then(|b| self.write(l, b));
                        if let Err(e) = r {
                            if let Ok(mut f) = failed.lock() {
                                f.get_or_insert(e);
                            }
                            break;
                        }
                        if let Some(pb) = progress {
                            pb.inc(1);
                        }
                    }
                });
            }
        });
        match failed.into_inner().ok().flatten() {
            Some(e) => Err(e),
            None => Ok(jobs.len()),
        }
    }
}

fn local_err(p: &Path, e: std::io::Error) -> StorageError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StorageError::NotFound { uri: p.display().to_string() }
    } else {
        StorageError::Io { path: p.display().to_string(), source: e }
    }
}

/// object_store errors nest their causes over several lines; one line reads better in a log.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `(scheme://host[:port], decoded path)` of an HTTP(S) URL: the store key and the object path.
fn http_origin(url: &str) -> Result<(String, String), String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let origin = format!("{}://{}{}", parsed.scheme(), parsed.host_str().unwrap_or_default(), parsed.port().map(|p| format!(":{p}")).unwrap_or_default());
    Ok((origin, percent_decode(parsed.path().trim_start_matches('/'))))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
