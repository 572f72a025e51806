//! The daemon's vault index (spec 60): built whole at start, then kept
//! current note by note from a recursive watcher: each changed path is
//! reread (a directory's whole subtree) and only its notes' postings
//! change. A full rescan remains for the watcher's overflow, a vault that
//! cannot be watched (periodically), and a batch that would drop much of
//! the index, where the rescan's fuse refuses it.

use crate::daemon::Daemon;
use memoryd_core::vault::{self, Index, Update};
use notify::Watcher;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Changes closer together than this are one batch: an editor's save is a
/// few events within a millisecond or two, and an edit must be searchable
/// within 100 ms.
const DEBOUNCE: Duration = Duration::from_millis(10);
/// More changed paths than this waiting at once are a rescan instead.
const MAX_CHANGED_PATHS: usize = 4096;
/// The rescan period when the vault cannot be watched (and the retry of a
/// refused rescan).
const RESCAN_EVERY: Duration = Duration::from_secs(30);

/// The index and what `status` says about it.
pub struct VaultState {
    /// The vault in force since start (a new `vault` applies at restart).
    pub path: Option<PathBuf>,
    index: RwLock<Arc<Index>>,
    pub watching: AtomicBool,
    /// A rescan was refused and waits for a retry.
    pub refused: AtomicBool,
    /// Fragments waiting for the renderer task.
    pub fragments: FragmentQueue,
    /// Vectors for hybrid search, when `search.embeddings_url` is set.
    pub embedder: Option<Arc<crate::embedder::Embedder>>,
    /// Vault paths changed since the watcher last looked.
    changes: MergeQueue<PathBuf>,
}

impl VaultState {
    pub fn new(path: Option<PathBuf>, embedder: Option<crate::embedder::Embedder>) -> VaultState {
        VaultState {
            path,
            index: RwLock::new(Arc::new(Index::default())),
            watching: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            fragments: FragmentQueue::default(),
            embedder: embedder.map(Arc::new),
            changes: MergeQueue::with_limit(MAX_CHANGED_PATHS),
        }
    }

    pub fn index(&self) -> Arc<Index> {
        self.index.read().map(|i| i.clone()).unwrap_or_default()
    }

    fn swap(&self, index: Index) {
        if let Ok(mut current) = self.index.write() {
            *current = Arc::new(index);
        }
        if let Some(embedder) = &self.embedder {
            embedder.wake.notify_one();
        }
    }

    /// Applies note updates in place (a search holding the old index
    /// meanwhile keeps its copy); whether anything changed.
    fn apply(&self, updates: Vec<Update>) -> bool {
        let changed = {
            let Ok(mut current) = self.index.write() else { return false };
            let index = Arc::make_mut(&mut current);
            updates.into_iter().fold(false, |changed, update| index.apply(update) | changed)
        };
        if changed && let Some(embedder) = &self.embedder {
            embedder.wake.notify_one();
        }
        changed
    }

    /// Notes a change of vault paths for the watcher task.
    pub fn changed(&self, paths: Vec<PathBuf>) {
        self.changes.push(Some(paths));
    }
}

impl Daemon {
    /// Rescans the vault; whether the index changed. A rescan that would
    /// drop more than 10 notes and 20 % of the index keeps the old one.
    pub async fn rescan_vault(self: &Arc<Self>, why: &'static str) -> bool {
        let Some(path) = self.vault.path.clone() else { return false };
        let scan = match self.blocking(move |_| vault::scan(&path)).await {
            Ok(scan) => scan,
            Err(e) => {
                tracing::warn!(why, error = %e, "cannot scan the vault; keeping the last index");
                return false;
            }
        };
        let old = self.vault.index();
        if vault::rescan_refused(old.len(), scan.notes.len()) {
            if !self.vault.refused.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    why,
                    indexed = old.len(),
                    found = scan.notes.len(),
                    "a rescan would drop most of the vault; keeping the old index and retrying later"
                );
            }
            return false;
        }
        self.vault.refused.store(false, Ordering::Relaxed);
        if old.notes().into_iter().eq(&scan.notes) && old.skipped() == scan.skipped.len() {
            return false;
        }
        tracing::info!(why, notes = scan.notes.len(), skipped = scan.skipped.len(), "vault indexed");
        self.vault.swap(Index::build(scan));
        true
    }

    /// Brings the index up to date with these changed paths of the vault
    /// (absolute), one note at a time (a directory's notes all, a moved
    /// one's both ways); whether the index changed. A path outside the
    /// vault, a vault that cannot be opened, or a batch that would drop
    /// more than the rescan's fuse allows is a rescan instead.
    pub async fn update_vault(self: &Arc<Self>, paths: BTreeSet<PathBuf>, why: &'static str) -> bool {
        let Some(root) = self.vault.path.clone() else { return false };
        let index = self.vault.index();
        let updates = self
            .blocking(move |_| {
                paths
                    .iter()
                    .map(|path| {
                        let rel = path.strip_prefix(&root).ok()?.to_str()?;
                        vault::reread(&root, rel, &index)
                    })
                    .collect::<Option<Vec<Vec<Update>>>>()
                    .map(|updates| (updates.into_iter().flatten().collect::<Vec<_>>(), index))
            })
            .await;
        let Some((updates, index)) = updates else { return self.rescan_vault(why).await };
        let dropped = updates
            .iter()
            .filter(|u| matches!(u, Update::Gone(p) | Update::Skipped(p) if index.get(p).is_some()))
            .count();
        if vault::rescan_refused(index.len(), index.len() - dropped) {
            return self.rescan_vault(why).await;
        }
        let count = updates.len();
        // Held here, this copy would make the update clone the whole index.
        drop(index);
        let changed = self.blocking(move |d| d.vault.apply(updates)).await;
        tracing::debug!(why, paths = count, changed, notes = self.vault.index().len(), "vault updated");
        changed
    }
}

/// Keeps the index current (the start-up sweep builds it first, so the
/// first fragments list the notes); every change re-renders the fragments.
pub async fn watch(daemon: Arc<Daemon>) {
    let Some(path) = daemon.vault.path.clone() else { return };
    let watched = path.clone();
    let state = daemon.clone();
    // A recursive watch walks the whole vault: on a blocking thread.
    let watcher = daemon
        .blocking(move |_| {
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                // The kernel's queue overflowed, or a watch was lost: only a
                // rescan knows what changed.
                Ok(e) if e.need_rescan() => state.vault.changes.push(None),
                Ok(e) if crate::tasks::is_change(&e) => state.vault.changed(e.paths),
                Ok(_) => {}
                Err(_) => state.vault.changes.push(None),
            })
            .and_then(|mut w| {
                w.watch(&watched, notify::RecursiveMode::Recursive)?;
                Ok(w)
            })
        })
        .await;
    let _watcher = match watcher {
        Ok(w) => {
            daemon.vault.watching.store(true, Ordering::Relaxed);
            Some(w)
        }
        Err(e) => {
            tracing::warn!(task = "vault-watcher", error = %e, vault = %path.display(), "cannot watch the vault; rescanning every 30 s");
            None
        }
    };
    let mut rescan = tokio::time::interval(RESCAN_EVERY);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    rescan.tick().await;
    loop {
        let changed = tokio::select! {
            _ = daemon.host.shutdown.begun.cancelled() => return,
            () = daemon.vault.changes.wait() => {
                tokio::time::sleep(DEBOUNCE).await;
                match daemon.vault.changes.take() {
                    None => false,
                    Some(Some(paths)) => daemon.update_vault(paths, "change").await,
                    Some(None) => daemon.rescan_vault("watcher overflow").await,
                }
            }
            _ = rescan.tick(), if _watcher.is_none() || daemon.vault.refused.load(Ordering::Relaxed) => {
                daemon.rescan_vault("rescan").await
            }
        };
        if changed {
            daemon.refresh_fragments(None);
        }
    }
}

/// Work waiting for a task: requests merge into one set (or "all"), so
/// however fast they come, what waits is bounded (by the fleet's size for
/// fragments, by a limit past which it becomes "all" for vault paths), and
/// the task is woken once for a burst.
pub struct MergeQueue<T> {
    pending: Mutex<Pending<T>>,
    wake: tokio::sync::Notify,
    limit: usize,
}

/// The fragments waiting to be re-rendered, by personality.
pub type FragmentQueue = MergeQueue<String>;

enum Pending<T> {
    Nothing,
    Some(BTreeSet<T>),
    All,
}

impl<T> Default for MergeQueue<T> {
    fn default() -> MergeQueue<T> {
        MergeQueue::with_limit(usize::MAX)
    }
}

impl<T> MergeQueue<T> {
    /// A queue where more than `limit` items waiting become "all".
    pub fn with_limit(limit: usize) -> MergeQueue<T> {
        MergeQueue { pending: Mutex::new(Pending::Nothing), wake: tokio::sync::Notify::new(), limit }
    }

    /// Asks for these items (all with None).
    pub fn push(&self, items: Option<Vec<T>>)
    where
        T: Ord,
    {
        if let Ok(mut pending) = self.pending.lock() {
            *pending = match (std::mem::replace(&mut *pending, Pending::Nothing), items) {
                (Pending::All, _) | (_, None) => Pending::All,
                (Pending::Nothing, Some(more)) => Pending::Some(more.into_iter().collect()),
                (Pending::Some(mut set), Some(more)) => {
                    set.extend(more);
                    Pending::Some(set)
                }
            };
            if matches!(&*pending, Pending::Some(set) if set.len() > self.limit) {
                *pending = Pending::All;
            }
        }
        self.wake.notify_one();
    }

    /// Waits until something was pushed since the last [`Self::take`].
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    /// What is waiting: None for nothing, `Some(None)` for all.
    pub fn take(&self) -> Option<Option<BTreeSet<T>>> {
        match self.pending.lock().map(|mut p| std::mem::replace(&mut *p, Pending::Nothing)) {
            Ok(Pending::Nothing) | Err(_) => None,
            Ok(Pending::Some(set)) => Some(Some(set)),
            Ok(Pending::All) => Some(None),
        }
    }
}

/// Fragment re-renders asked for closer together than this are one batch.
const FRAGMENT_DEBOUNCE: Duration = Duration::from_millis(50);

/// Re-renders the fragments asked for, a burst of requests at a time.
pub async fn fragment_renderer(daemon: Arc<Daemon>) {
    loop {
        tokio::select! {
            _ = daemon.host.shutdown.begun.cancelled() => return,
            () = daemon.vault.fragments.wait() => {}
        }
        tokio::time::sleep(FRAGMENT_DEBOUNCE).await;
        let Some(wanted) = daemon.vault.fragments.take() else { continue };
        let Some(map) = daemon.fleet.map.lock().ok().and_then(|f| f.map().cloned()) else { continue };
        let peers: Vec<_> =
            map.peers.into_iter().filter(|p| wanted.as_ref().is_none_or(|w| w.contains(&p.personality))).collect();
        match daemon.provisioning_job(move |p| p.render_fragments(&peers)).await {
            Ok((written, _, failed)) if written + failed > 0 => {
                tracing::info!(written, failed, "fragments re-rendered");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(task = "fragments", error = %e, "cannot re-render fragments"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FragmentQueue;

    #[test]
    fn fragment_requests_merge_into_one_bounded_set() {
        let queue = FragmentQueue::default();
        assert_eq!(queue.take(), None, "nothing asked");
        for _ in 0..10_000 {
            queue.push(Some(vec!["ada".into(), "bob".into()]));
        }
        queue.push(Some(vec!["cyd".into()]));
        let peers = queue.take().flatten().unwrap();
        assert_eq!(peers.into_iter().collect::<Vec<_>>(), ["ada", "bob", "cyd"]);
        assert_eq!(queue.take(), None, "taken once");
        queue.push(Some(vec!["ada".into()]));
        queue.push(None);
        queue.push(Some(vec!["bob".into()]));
        assert_eq!(queue.take(), Some(None), "all absorbs the rest");
        let paths = super::MergeQueue::with_limit(3);
        paths.push(Some(vec![1, 2, 3]));
        paths.push(Some(vec![3]));
        assert_eq!(paths.take(), Some(Some([1, 2, 3].into())), "within the limit");
        paths.push(Some(vec![1, 2, 3, 4]));
        assert_eq!(paths.take(), Some(None), "past the limit: all");
    }
}
