//! CPU-heavy work (decompressing, decoding, converting records to rows) off
//! the async executor, a few tasks at a time.
//!
//! `spawn_blocking` alone starts a thread per waiting task, up to 512: under
//! overload hundreds of requests were decoded at once, each thread with its
//! own allocator arena, so memory grew with the connection count and the
//! two cores were shared by hundreds of threads. Here at most one task per
//! core runs; the rest wait their turn without holding a thread.

use std::sync::LazyLock;

use tokio::sync::Semaphore;

static SLOTS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()).max(2)));

/// Runs `work` on the blocking pool once a slot is free.
pub async fn run<T, F>(work: F) -> Result<T, tokio::task::JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let _slot = SLOTS.acquire().await.expect("the slots are never closed");
    tokio::task::spawn_blocking(work).await
}
