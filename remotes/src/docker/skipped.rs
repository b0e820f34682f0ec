//! Hosts passed over for the next one, handed to the caller's hook.

use std::fmt;
use std::sync::Arc;

use crate::Error;

/// A host the resolver or a fetcher passed over for the next one: a mirror
/// that failed before the upstream was asked, or a foreign layer's URL that
/// failed before the registry was. containerd logs these ("trying next
/// host"); this crate logs nothing, and hands them to the hook given to
/// [`DockerResolver::on_host_skipped`](super::DockerResolver::on_host_skipped).
/// The request may still succeed at the next host; if every host fails, the
/// error returned ([`Error::HostsFailed`]) says the others in its message
/// and has the last as its source: its
/// [`Report`](ocidist_content::Report) lists them all.
#[derive(Debug)]
#[non_exhaustive]
pub struct HostSkipped<'a> {
    /// The host passed over (`mirror.example:5000`); for a descriptor's
    /// URL, the URL.
    pub host: &'a str,
    /// Why: its error.
    pub error: &'a Error,
}

/// The function [`HostSkipped`] goes to.
type Hook = dyn Fn(&HostSkipped<'_>) + Send + Sync;

/// The caller's hook, if any; shared by clones of the resolver and by its
/// fetchers.
#[derive(Clone, Default)]
pub(crate) struct SkipHook(Option<Arc<Hook>>);

impl SkipHook {
    pub(crate) fn new(hook: impl Fn(&HostSkipped<'_>) + Send + Sync + 'static) -> Self {
        SkipHook(Some(Arc::new(hook)))
    }

    /// Tells the hook that `host` failed with `error` and the next is tried.
    pub(crate) fn skipped(&self, host: &str, error: &Error) {
        if let Some(hook) = &self.0 {
            hook(&HostSkipped { host, error });
        }
    }
}

impl fmt::Debug for SkipHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "SkipHook(set)"
        } else {
            "SkipHook(none)"
        })
    }
}
