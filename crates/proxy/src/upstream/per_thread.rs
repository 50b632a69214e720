//! State owned by the thread that uses it: each worker's upstream pools.
//!
//! weft-proxy runs one current-thread tokio runtime per worker, so a
//! connection is only ever driven by the worker that opened it, and a
//! worker's pool is never touched by another thread. [`PerThread`] gives
//! every thread its own value (a `RefCell` where it changes) reached
//! without a lock: one thread-id lookup and an acquire load. The values
//! are dropped with the owner (the cluster), whichever thread drops it,
//! which closes the idle connections they hold.

use std::fmt;
use std::sync::OnceLock;
use thread_local::ThreadLocal;

/// One `T` per thread, allocated on first use (a cluster that never sees
/// a request costs a pointer).
pub(super) struct PerThread<T: Send>(OnceLock<Box<ThreadLocal<T>>>);

impl<T: Send> PerThread<T> {
    pub(super) const fn new() -> Self {
        PerThread(OnceLock::new())
    }

    /// The calling thread's value, made by `init` on its first call.
    pub(super) fn get_or(&self, init: impl FnOnce() -> T) -> &T {
        self.0
            .get_or_init(|| Box::new(ThreadLocal::new()))
            .get_or(init)
    }
}

impl<T: Send + Default> PerThread<T> {
    /// The calling thread's value, `T::default()` at first.
    pub(super) fn get(&self) -> &T {
        self.get_or(T::default)
    }
}

impl<T: Send> Default for PerThread<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send> fmt::Debug for PerThread<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerThread")
            .field("used", &self.0.get().is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    // Thread ids are reused once a thread ends, so the threads of these
    // tests wait for each other before ending.

    #[test]
    fn each_thread_has_its_own_value() {
        let p: Arc<PerThread<RefCell<Vec<usize>>>> = Arc::new(PerThread::new());
        p.get().borrow_mut().push(0);
        let all = Arc::new(Barrier::new(3));
        let threads: Vec<_> = (1..=3)
            .map(|i| {
                let (p, all) = (p.clone(), all.clone());
                std::thread::spawn(move || {
                    for _ in 0..i {
                        p.get().borrow_mut().push(i);
                    }
                    all.wait();
                    p.get().borrow().clone()
                })
            })
            .collect();
        for (i, t) in threads.into_iter().enumerate() {
            assert_eq!(t.join().expect("thread"), vec![i + 1; i + 1]);
        }
        assert_eq!(*p.get().borrow(), vec![0]);
    }

    #[test]
    fn values_are_dropped_with_the_owner() {
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let p: Arc<PerThread<Counted>> = Arc::new(PerThread::new());
        let all = Arc::new(Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (p, d, all) = (p.clone(), dropped.clone(), all.clone());
                std::thread::spawn(move || {
                    p.get_or(|| Counted(d));
                    all.wait();
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            0,
            "kept after the threads end"
        );
        drop(p);
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
    }
}
