//! Spawned tasks tied to whoever awaits them.

use std::future::Future;

use tokio::task::JoinHandle;

/// A spawned task that is aborted when its handle is dropped (the fetch that
/// awaited it cancelled, or failed elsewhere), so it never goes on unseen.
pub(crate) struct AbortOnDrop<T>(JoinHandle<T>);

impl<T: Send + 'static> AbortOnDrop<T> {
    /// Spawns `future` on the current runtime.
    pub(crate) fn spawn(future: impl Future<Output = T> + Send + 'static) -> Self {
        AbortOnDrop(tokio::spawn(future))
    }

    /// The task's output; a panic in it is raised here. `None`: the runtime
    /// is shutting down and cancelled it.
    pub(crate) async fn join(mut self) -> Option<T> {
        match (&mut self.0).await {
            Ok(output) => Some(output),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => None,
        }
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
