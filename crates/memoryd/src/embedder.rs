//! Optional embeddings for hybrid search (issue 20 part B): the background
//! worker that keeps a vector per note, its on-disk cache, and the query's
//! embedding at search time. Search never waits for the vault to be
//! embedded and never fails because of the endpoint: a note without a
//! vector ranks lexically, a query not embedded within
//! `search.query_deadline` is answered lexically (and says so).
//!
//! The HTTP client is hyper's own http1 connection over a tokio socket:
//! hyper already serves the MCP endpoint, so this adds its `client`
//! feature and no new crate, and every request runs under one deadline
//! (connect, send and the whole answer).

use crate::daemon::Daemon;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use memoryd_core::config::SearchConfig;
use memoryd_core::host::files::FileGuard;
use memoryd_core::vault::Note;
use memoryd_core::vault::embed::cache::VectorCache;
use memoryd_core::vault::embed::{self, Endpoint, Key, Vectors};
use memoryd_proto::ProgressStatus;
use memoryd_proto::status::{EmbeddingsStatus, EndpointHealth};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// The vectors are republished to search at most this often while a large
/// vault is being embedded (a republish copies the path map).
const PUBLISH_EVERY: Duration = Duration::from_millis(500);
/// After a failed batch, the worker waits this long, doubling up to
/// [`BACKOFF_MAX`], before it tries again.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The most of an answer read per text asked (a 4,096-dimension vector as
/// JSON is about 80 KiB).
const ANSWER_BYTES_PER_TEXT: usize = 128 << 10;

/// The embeddings side of the vault; absent when `search.embeddings_url`
/// is unset.
pub struct Embedder {
    endpoint: Endpoint,
    model: String,
    /// The `Authorization` header's value, read at start.
    auth: Result<Option<String>, String>,
    config: SearchConfig,
    cache: VectorCache,
    /// What search scans: the notes with a vector, by path.
    vectors: RwLock<Arc<Vectors>>,
    /// 0 until the first vector is known.
    dimension: AtomicUsize,
    health: Mutex<(EndpointHealth, Option<String>)>,
    /// Woken when the index changed.
    pub wake: tokio::sync::Notify,
}

impl Embedder {
    /// The embedder of `config`, None when embeddings are off. A key that
    /// cannot be read leaves the endpoint down (and says why) rather than
    /// stopping the daemon: search still answers lexically.
    pub fn new(config: &SearchConfig, state: PathBuf, files: FileGuard) -> Option<Embedder> {
        let url = config.embeddings_url.as_deref()?;
        let model = config.embeddings_model.clone()?;
        let endpoint = match Endpoint::parse(url) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "embeddings are off");
                return None;
            }
        };
        let auth = if memoryd_core::sandbox_armed() && !endpoint.is_loopback() {
            Err(format!("the test sandbox reaches only a loopback embeddings endpoint, not {endpoint}"))
        } else {
            api_key(config).map(|k| k.map(|k| format!("Bearer {k}")))
        };
        if let Err(e) = &auth {
            tracing::warn!(error = %e, "the embeddings endpoint will not be asked; search stays lexical");
        }
        let health = match &auth {
            Err(e) => (EndpointHealth::Down, Some(e.clone())),
            Ok(_) => (EndpointHealth::Unknown, None),
        };
        Some(Embedder {
            endpoint,
            model,
            auth,
            config: config.clone(),
            cache: VectorCache::new(state.join("vectors.cache"), files),
            vectors: RwLock::default(),
            dimension: AtomicUsize::new(0),
            health: Mutex::new(health),
            wake: tokio::sync::Notify::new(),
        })
    }

    pub fn vectors(&self) -> Arc<Vectors> {
        self.vectors.read().map(|v| v.clone()).unwrap_or_default()
    }

    fn publish(&self, vectors: Vectors) {
        if let Ok(mut v) = self.vectors.write() {
            *v = Arc::new(vectors);
        }
    }

    pub fn rrf_k(&self) -> usize {
        self.config.rrf_k
    }

    fn dim(&self) -> Option<usize> {
        Some(self.dimension.load(Ordering::Relaxed)).filter(|&d| d > 0)
    }

    fn set_health(&self, result: Result<(), &str>) {
        let (health, error) = match result {
            Ok(()) => (EndpointHealth::Up, None),
            Err(e) => (EndpointHealth::Down, Some(e.to_owned())),
        };
        if let Ok(mut h) = self.health.lock() {
            if h.0 != health {
                match &error {
                    Some(e) => {
                        tracing::warn!(endpoint = %self.endpoint, error = %e, "the embeddings endpoint is down; search answers lexically")
                    }
                    None => tracing::info!(endpoint = %self.endpoint, "the embeddings endpoint answers"),
                }
            }
            *h = (health, error);
        }
    }

    pub fn status(&self) -> EmbeddingsStatus {
        let (health, error) = self.health.lock().map(|h| h.clone()).unwrap_or((EndpointHealth::Unknown, None));
        EmbeddingsStatus {
            endpoint: self.endpoint.to_string(),
            model: self.model.clone(),
            embedded: self.vectors().len(),
            dimension: self.dim(),
            health,
            error,
        }
    }

    /// Embeds `texts` in one request within `deadline`; records the
    /// endpoint's health.
    async fn embed(&self, texts: &[String], deadline: Duration) -> Result<Vec<Vec<f32>>, String> {
        let result = self.request(texts, deadline).await;
        self.set_health(result.as_ref().map(drop).map_err(String::as_str));
        let vectors = result?;
        if let Some(first) = vectors.first() {
            // The first answer fixes the dimension; a later one of another
            // was refused by parse_answer.
            let _ = self.dimension.compare_exchange(0, first.len(), Ordering::Relaxed, Ordering::Relaxed);
        }
        Ok(vectors)
    }

    async fn request(&self, texts: &[String], deadline: Duration) -> Result<Vec<Vec<f32>>, String> {
        let auth = self.auth.clone()?;
        let body = embed::request_body(&self.model, texts);
        let limit = ANSWER_BYTES_PER_TEXT * texts.len() + (64 << 10);
        let (status, answer) = tokio::time::timeout(deadline, self.post(body, auth, limit)).await.map_err(|_| {
            format!("{} gave no answer within {}", self.endpoint, humantime::format_duration(deadline))
        })??;
        embed::parse_answer(status, &answer, texts.len(), self.dim()).map_err(|e| e.to_string())
    }

    /// One POST on a fresh connection; the caller bounds it in time.
    async fn post(&self, body: Vec<u8>, auth: Option<String>, limit: usize) -> Result<(u16, Bytes), String> {
        use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} {}: {e}", self.endpoint);
        let stream = tokio::net::TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
            .await
            .map_err(|e| fail("cannot connect to", &e))?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(io).await.map_err(|e| fail("cannot talk HTTP to", &e))?;
        let mut request = hyper::Request::post(self.endpoint.path.as_str())
            .header(HOST, format!("{}:{}", self.endpoint.host, self.endpoint.port))
            .header(CONTENT_TYPE, "application/json");
        if let Some(auth) = auth {
            request = request.header(AUTHORIZATION, auth);
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|e| fail("cannot build a request to", &e))?;
        // The connection is driven beside the exchange and stopped with it
        // (an exchange cut short by its deadline leaves nothing running).
        let _driver = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let answer = sender.send_request(request).await.map_err(|e| fail("no answer from", &e))?;
        let status = answer.status().as_u16();
        let body = Limited::new(answer.into_body(), limit)
            .collect()
            .await
            .map_err(|e| fail("cannot read the answer of", &e))?
            .to_bytes();
        Ok((status, body))
    }

    /// The query's unit vector within `search.query_deadline`; None (and
    /// the search goes lexical) when nothing is embedded yet, the endpoint
    /// is slow or down, or it answers garbage.
    pub async fn embed_query(&self, query: &str) -> Option<Vec<f32>> {
        if self.vectors().is_empty() {
            return None;
        }
        let text = format!("{}{query}", self.config.query_prefix);
        match self.embed(&[text], self.config.query_deadline).await {
            Ok(mut v) => v.pop(),
            Err(error) => {
                tracing::debug!(%error, "query not embedded; searching lexically");
                None
            }
        }
    }

    /// `verify`'s line: one request now, within the deadline a search's
    /// query has (what search would see).
    pub async fn probe(&self) -> (ProgressStatus, String) {
        let deadline = self.config.query_deadline;
        let what = format!("{} model {}", self.endpoint, self.model);
        match self.embed(&["memoryd verify".to_owned()], deadline).await {
            Ok(v) => (
                ProgressStatus::Ok,
                format!(
                    "{what} answers ({} dimensions), {} notes embedded",
                    v.first().map_or(0, Vec::len),
                    self.vectors().len()
                ),
            ),
            Err(e) => (
                ProgressStatus::Warn,
                format!("{what}: {e}; search answers lexically until it works (check `search.embeddings_url`)"),
            ),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The API key: from `search.embeddings_key_file` (which must be mode 0600
/// or stricter) or the variable named by `search.embeddings_key_env`.
fn api_key(config: &SearchConfig) -> Result<Option<String>, String> {
    if let Some(file) = &config.embeddings_key_file {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(file)
            .map_err(|e| format!("cannot read the embeddings key file {}: {e}", file.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!("the embeddings key file {} is readable by others; chmod 600 it", file.display()));
        }
        let key = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the embeddings key file {}: {e}", file.display()))?;
        return Ok(Some(key.trim().to_owned()).filter(|k| !k.is_empty()));
    }
    if let Some(var) = &config.embeddings_key_env {
        let key = std::env::var(var)
            .map_err(|_| format!("the variable {var} named by `search.embeddings_key_env` is not set"))?;
        return Ok(Some(key.trim().to_owned()).filter(|k| !k.is_empty()));
    }
    Ok(None)
}

/// The worker's memory of one note, so an unchanged note is not hashed
/// again on every pass.
struct Seen {
    modified: SystemTime,
    len: usize,
    key: Key,
}

/// Keeps a vector for every note: loads the cache, publishes what it
/// holds, embeds the rest in batches (at most `search.concurrency` in
/// flight), and starts again whenever the index changes.
pub async fn run(daemon: Arc<Daemon>) {
    let Some(embedder) = daemon.vault.embedder.clone() else { return };
    if embedder.auth.is_err() {
        return;
    }
    let cache = embedder.cache.clone();
    let started = Instant::now();
    let loaded = match tokio::task::spawn_blocking(move || cache.load()).await {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the vector cache; embedding the vault again");
            Default::default()
        }
        Err(_) => return,
    };
    tracing::info!(
        vectors = loaded.vectors.len(),
        torn = loaded.torn,
        ms = started.elapsed().as_millis() as u64,
        "vector cache loaded"
    );
    let mut store: Store = Arc::new(loaded.vectors);
    if let Some(v) = store.values().next() {
        embedder.dimension.store(v.len(), Ordering::Relaxed);
    }
    // The file's records, and whether one was torn: both decide a rewrite.
    let mut records = loaded.records;
    let mut torn = loaded.torn;
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut backoff = BACKOFF_MIN;
    // The first pass waits for the start-up scan: against the empty index
    // before it, every cached vector would look stale.
    tokio::select! {
        _ = daemon.host.shutdown.begun.cancelled() => return,
        () = embedder.wake.notified() => {}
    }
    loop {
        // Registered before the index is read, so a change during the pass wakes the next one.
        let woken = embedder.wake.notified();
        let index = daemon.vault.index();
        let model = embedder.model.clone();
        let prefix = embedder.config.passage_prefix.clone();
        // Hashing thousands of notes is CPU work: off the async workers.
        let Pass { keys, seen: seen_after, missing } = {
            let index = index.clone();
            let previous = std::mem::take(&mut seen);
            let known = store.clone();
            match tokio::task::spawn_blocking(move || note_keys(&index.notes(), &model, &prefix, previous, &known))
                .await
            {
                Ok(done) => done,
                Err(_) => return,
            }
        };
        seen = seen_after;
        let keys = Arc::new(keys);
        let live: HashSet<Key> = keys.values().copied().collect();
        let dim = embedder.dim();
        // A vector of another dimension (an old cache of another model of the same name) is not used.
        Arc::make_mut(&mut store).retain(|k, v| live.contains(k) && dim.is_none_or(|d| v.len() == d));
        publish(&embedder, &keys, &store).await;
        if torn || records > 2 * store.len() + 64 {
            let (cache, entries) = (embedder.cache.clone(), store.clone());
            let n = entries.len();
            let rewritten =
                tokio::task::spawn_blocking(move || cache.rewrite(entries.iter().map(|(k, v)| (k, &v[..])))).await;
            match rewritten {
                Ok(Ok(())) => {
                    tracing::info!(kept = n, dropped = records.saturating_sub(n), torn, "vector cache rewritten");
                    (records, torn) = (n, false);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot rewrite the vector cache; vectors are kept in memory only")
                }
                Err(_) => return,
            }
        }
        let failed = embed_missing(&daemon, &embedder, missing, &keys, &mut store, &mut records, torn).await;
        if failed {
            tokio::select! {
                _ = daemon.host.shutdown.begun.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        backoff = BACKOFF_MIN;
        tokio::select! {
            _ = daemon.host.shutdown.begun.cancelled() => return,
            () = woken => {}
        }
    }
}

/// What one pass found in the index.
struct Pass {
    /// Every note's cache key, by path.
    keys: HashMap<String, Key>,
    /// The memo for the next pass.
    seen: HashMap<String, Seen>,
    /// The keys without a vector yet, with the text to send.
    missing: Vec<(Key, String)>,
}

/// The keys of `notes`, each note hashed only when it changed.
fn note_keys(
    notes: &[&Note],
    model: &str,
    prefix: &str,
    mut previous: HashMap<String, Seen>,
    known: &HashMap<Key, Arc<[f32]>>,
) -> Pass {
    let mut keys = HashMap::with_capacity(notes.len());
    let mut seen = HashMap::with_capacity(notes.len());
    let mut missing = Vec::new();
    let mut asked = HashSet::new();
    for note in notes {
        let len = note.body.len() + note.title.len();
        let memo = previous.remove(&note.path).filter(|s| s.modified == note.modified && s.len == len);
        let (key, text) = match memo {
            Some(s) => (s.key, None),
            None => {
                let text = embed::passage(note, prefix);
                (embed::key(model, &text), Some(text))
            }
        };
        if !known.contains_key(&key) && asked.insert(key) {
            missing.push((key, text.unwrap_or_else(|| embed::passage(note, prefix))));
        }
        keys.insert(note.path.clone(), key);
        seen.insert(note.path.clone(), Seen { modified: note.modified, len, key });
    }
    Pass { keys, seen, missing }
}

/// The cached vectors, by content key.
type Store = Arc<HashMap<Key, Arc<[f32]>>>;

/// Publishes the vectors of the notes in `keys` that `store` holds. The
/// matrix is built on a blocking thread (tens of MB at 50,000 notes); the
/// worker waits for it, so its `Arc`s are unique again when it next
/// changes the store.
async fn publish(embedder: &Embedder, keys: &Arc<HashMap<String, Key>>, store: &Store) {
    let (keys, store) = (keys.clone(), store.clone());
    let built = tokio::task::spawn_blocking(move || {
        Vectors::new(keys.iter().filter_map(|(path, key)| Some((path.as_str(), &store.get(key)?[..]))))
    })
    .await;
    if let Ok(vectors) = built {
        embedder.publish(vectors);
    }
}

/// Embeds `missing` in batches, appending each answered batch to the
/// cache and publishing the vectors as they come; whether a batch failed.
async fn embed_missing(
    daemon: &Arc<Daemon>,
    embedder: &Arc<Embedder>,
    missing: Vec<(Key, String)>,
    keys: &Arc<HashMap<String, Key>>,
    store: &mut Store,
    records: &mut usize,
    torn: bool,
) -> bool {
    if missing.is_empty() {
        return false;
    }
    let total = missing.len();
    tracing::info!(notes = total, "embedding notes");
    let started = Instant::now();
    let batch = embedder.config.batch_size.max(1);
    let mut batches = missing.chunks(batch).map(<[_]>::to_vec).collect::<Vec<_>>().into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut failed = false;
    let mut last_publish = Instant::now();
    loop {
        while !failed && running.len() < embedder.config.concurrency.max(1) {
            let Some(batch) = batches.next() else { break };
            let embedder = embedder.clone();
            running.spawn(async move {
                let texts: Vec<String> = batch.iter().map(|(_, t)| t.clone()).collect();
                let result = embedder.embed(&texts, embedder.config.embeddings_timeout).await;
                (batch, result)
            });
        }
        let next = tokio::select! {
            _ = daemon.host.shutdown.begun.cancelled() => return true,
            next = running.join_next() => next,
        };
        let Some(Ok((batch, result))) = next else { break };
        let vectors = match result {
            Ok(v) => v,
            Err(error) => {
                tracing::debug!(%error, "a batch was not embedded");
                failed = true;
                continue;
            }
        };
        let entries: Vec<(Key, Arc<[f32]>)> = batch.iter().zip(vectors).map(|((k, _), v)| (*k, Arc::from(v))).collect();
        // A torn file is appended to only once rewritten (the rewrite failed otherwise).
        if !torn {
            let cache = embedder.cache.clone();
            let written = entries.clone();
            match tokio::task::spawn_blocking(move || cache.append(written.iter().map(|(k, v)| (k, &v[..])))).await {
                Ok(Ok(())) => *records += entries.len(),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot append to the vector cache; vectors are kept in memory only")
                }
                Err(_) => return true,
            }
        }
        Arc::make_mut(store).extend(entries);
        if last_publish.elapsed() >= PUBLISH_EVERY {
            publish(embedder, keys, store).await;
            last_publish = Instant::now();
        }
    }
    publish(embedder, keys, store).await;
    tracing::info!(notes = total, failed, ms = started.elapsed().as_millis() as u64, "embedding pass done");
    failed
}
