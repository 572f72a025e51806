//! The daemon's vault index (spec 60): built at start, kept current from a
//! recursive watcher (debounced), with a periodic rescan when watching
//! fails. A rescan that would empty much of the index is refused.

use crate::daemon::Daemon;
use memoryd_core::vault::{self, Index};
use notify::Watcher;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// Changes closer together than this are one rescan.
const DEBOUNCE: Duration = Duration::from_millis(300);
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
        if old.notes() == scan.notes.as_slice() {
            return false;
        }
        tracing::info!(why, notes = scan.notes.len(), skipped = scan.skipped, "vault indexed");
        self.vault.swap(Index::build(scan));
        true
    }
}

/// Keeps the index current (the start-up sweep builds it first, so the
/// first fragments list the notes); every change re-renders the fragments.
pub async fn watch(daemon: Arc<Daemon>) {
    let Some(path) = daemon.vault.path.clone() else { return };
    // Bounded: one waiting wake-up is as good as many.
    let (tx, mut rx) = mpsc::channel::<()>(crate::tasks::WATCH_QUEUE);
    let watched = path.clone();
    // A recursive watch walks the whole vault: on a blocking thread.
    let watcher = daemon
        .blocking(move |_| {
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| crate::tasks::is_change(&e)) {
                    let _ = tx.try_send(());
                }
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
        let why = tokio::select! {
            _ = daemon.host.shutdown.begun.cancelled() => return,
            Some(()) = rx.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
                "change"
            }
            _ = rescan.tick(), if _watcher.is_none() || daemon.vault.refused.load(Ordering::Relaxed) => "rescan",
        };
        if daemon.rescan_vault(why).await {
            daemon.refresh_fragments(None);
        }
    }
}

/// The fragments waiting to be re-rendered. Requests merge into one set
/// (or "all"), so however fast changes come, what waits is bounded by the
/// fleet's size, and the renderer is woken once for a burst.
#[derive(Default)]
pub struct FragmentQueue {
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
enum Pending {
    #[default]
    Nothing,
    Peers(std::collections::BTreeSet<String>),
    All,
}

impl FragmentQueue {
    /// Asks for these peers' fragments (every peer's with None).
    pub fn push(&self, peers: Option<Vec<String>>) {
        if let Ok(mut pending) = self.pending.lock() {
            *pending = match (std::mem::take(&mut *pending), peers) {
                (Pending::All, _) | (_, None) => Pending::All,
                (Pending::Nothing, Some(more)) => Pending::Peers(more.into_iter().collect()),
                (Pending::Peers(mut set), Some(more)) => {
                    set.extend(more);
                    Pending::Peers(set)
                }
            };
        }
        self.wake.notify_one();
    }

    /// Waits until something was pushed since the last [`Self::take`].
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    /// What is waiting: None for nothing, `Some(None)` for every peer.
    pub fn take(&self) -> Option<Option<std::collections::BTreeSet<String>>> {
        match self.pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default() {
            Pending::Nothing => None,
            Pending::Peers(set) => Some(Some(set)),
            Pending::All => Some(None),
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
    }
}
