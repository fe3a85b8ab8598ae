//! Which thread's reactor a socket made now belongs to: what the per-thread resources of
//! the origin's workers (`OriginConfig::workers`) are keyed by.

/// The calling thread, when it runs a current-thread runtime (an origin worker, a reverse
/// CONNECT channel's thread): a socket made now is registered with that thread's reactor
/// alone, and only tasks on this thread should use it. `None` on a multi-thread runtime,
/// whose threads share one reactor (or outside any runtime).
pub(crate) fn current_thread_runtime() -> Option<std::thread::ThreadId> {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => Some(std::thread::current().id()),
        _ => None,
    }
}
