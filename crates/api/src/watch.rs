//! Following a config directory: every change under it produces a new
//! [`Snapshot`] after a short quiet period (debounce), so an editor's burst
//! of writes becomes one reload.
//!
//! Uses `notify` (inotify on Linux) on a background thread; the callback
//! runs on that thread. Dropping the [`Watcher`] stops it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};

use crate::store::{Snapshot, Store};

/// Default quiet period before reloading.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

/// Default interval of the safety-net reload that runs even without events
/// (covers missed events, e.g. when the directory itself was replaced).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(30);

/// Watch settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// Quiet period after the last event before reloading.
    pub debounce: Duration,
    /// Reload at least this often even without events.
    pub resync: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce: DEFAULT_DEBOUNCE,
            resync: DEFAULT_RESYNC,
        }
    }
}

/// Failure to start watching.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch config directory {path}: {source}")]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// A running watch; dropping it stops the watch and joins its thread.
pub struct Watcher {
    inner: Option<notify::RecommendedWatcher>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Dropping the notify watcher drops its channel sender, which ends
        // the thread's receive loop.
        self.inner.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Watches `store`'s directory. After each burst of changes (quiet for
/// `debounce`), reloads the store and, if the content changed, calls
/// `on_change` with the new snapshot.
pub fn watch<F>(store: Arc<Store>, debounce: Duration, on_change: F) -> Result<Watcher, WatchError>
where
    F: FnMut(Arc<Snapshot>) + Send + 'static,
{
    watch_with(
        store,
        WatchOptions {
            debounce,
            ..WatchOptions::default()
        },
        on_change,
    )
}

/// As [`watch`], with explicit options (including the periodic resync).
pub fn watch_with<F>(
    store: Arc<Store>,
    opts: WatchOptions,
    mut on_change: F,
) -> Result<Watcher, WatchError>
where
    F: FnMut(Arc<Snapshot>) + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<()>();
    let dir = store.dir().to_path_buf();
    let mut inner =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if ev.kind.is_access() => {}
            Ok(_) => {
                let _ = tx.send(());
            }
            Err(e) => tracing::warn!(error = %e, "config watch error"),
        })
        .map_err(|source| WatchError::Notify {
            path: dir.clone(),
            source,
        })?;
    inner
        .watch(&dir, RecursiveMode::Recursive)
        .map_err(|source| WatchError::Notify {
            path: dir.clone(),
            source,
        })?;
    let thread = std::thread::Builder::new()
        .name("weft-config-watch".into())
        .spawn(move || {
            loop {
                // An event, or the resync interval without one.
                match rx.recv_timeout(opts.resync) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                // Debounce: wait until no event arrives for `debounce`.
                loop {
                    match rx.recv_timeout(opts.debounce) {
                        Ok(()) => continue,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                match store.reload() {
                    Ok(r) if r.changed => on_change(r.snapshot),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "config reload failed; keeping the last snapshot"),
                }
            }
        })
        .map_err(|e| WatchError::Notify {
            path: dir.clone(),
            source: notify::Error::io(e),
        })?;
    Ok(Watcher {
        inner: Some(inner),
        thread: Some(thread),
    })
}
