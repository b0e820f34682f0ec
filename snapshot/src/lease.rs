//! A snapshotter that records in a [`Lease`] every snapshot used through it,
//! so a collection ([`gc::prune`](crate::gc::prune) given the snapshots the
//! leases hold) keeps them however long the work takes. See
//! [`ocidist_content::lease`] for how leases work.
//!
//! ```
//! use std::collections::HashSet;
//! use ocidist_content::lease::Leases;
//! use ocidist_snapshot::gc::{PruneOptions, prune};
//! use ocidist_snapshot::lease::LeasedSnapshotter;
//! use ocidist_snapshot::{Labels, Snapshotter, native::NativeSnapshotter};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let leases = Leases::open(dir.path().join("leases"))?;
//! let snapshotter = NativeSnapshotter::open(dir.path().join("native"))?;
//! let leased = LeasedSnapshotter::new(&snapshotter, leases.acquire().await?);
//! leased.prepare("extract-1", None, Labels::new()).await?;
//! leased.commit("layer-1", "extract-1", Labels::new()).await?;
//!
//! // No grace period, yet the leased layer stays while its lease lives...
//! let now = PruneOptions { grace: std::time::Duration::ZERO, ..Default::default() };
//! let held = leases.hold()?;
//! assert!(prune(&snapshotter, held.snapshots(), &now).await?.removed.is_empty());
//! drop(held);
//! // ...and goes once it ends.
//! drop(leased);
//! let held = leases.hold()?;
//! assert_eq!(prune(&snapshotter, held.snapshots(), &now).await?.removed.len(), 1);
//! # Ok(())
//! # }
//! ```

use async_trait::async_trait;
use ocidist_content::lease::{Lease, Resource};

use crate::{
    CommitOpts, CommitRequest, Info, Labels, Mount, PrepareRequest, Result, Snapshotter, Usage,
};

/// Wraps a snapshotter, recording each snapshot it is asked about, prepares,
/// views, mounts or commits (and each parent named) in a lease, before the
/// snapshotter is asked. As containerd does, a snapshot removed through it,
/// and an active one committed through it (its key is gone), are let go
/// once the snapshotter has done so: a snapshot made later under the same
/// key is not kept by this lease.
#[derive(Debug, Clone)]
pub struct LeasedSnapshotter<S> {
    inner: S,
    lease: Lease,
}

impl<S> LeasedSnapshotter<S> {
    /// Wraps `inner`, recording in `lease`.
    pub fn new(inner: S, lease: Lease) -> Self {
        LeasedSnapshotter { inner, lease }
    }

    /// The wrapped snapshotter.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    async fn record(&self, key: &str) -> Result<()> {
        Ok(self.lease.add(Resource::Snapshot(key.to_string())).await?)
    }

    async fn let_go(&self, key: &str) -> Result<()> {
        Ok(self
            .lease
            .remove(&Resource::Snapshot(key.to_string()))
            .await?)
    }

    async fn record_with_parent(&self, key: &str, parent: Option<&str>) -> Result<()> {
        self.record(key).await?;
        match parent {
            Some(parent) => self.record(parent).await,
            None => Ok(()),
        }
    }
}

#[async_trait]
impl<S: Snapshotter> Snapshotter for LeasedSnapshotter<S> {
    async fn stat(&self, key: &str) -> Result<Info> {
        self.record(key).await?;
        self.inner.stat(key).await
    }
    async fn update(&self, info: Info, fieldpaths: &[&str]) -> Result<Info> {
        self.inner.update(info, fieldpaths).await
    }
    async fn usage(&self, key: &str) -> Result<Usage> {
        self.inner.usage(key).await
    }
    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.record(key).await?;
        self.inner.mounts(key).await
    }
    async fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.record_with_parent(key, parent).await?;
        self.inner.prepare(key, parent, labels).await
    }
    async fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.record_with_parent(key, parent).await?;
        self.inner.view(key, parent, labels).await
    }
    async fn commit_with(&self, name: &str, key: &str, opts: CommitOpts) -> Result<()> {
        self.record_with_parent(name, opts.parent.as_deref())
            .await?;
        self.inner.commit_with(name, key, opts).await?;
        self.let_go(key).await
    }
    async fn prepare_all(&self, requests: Vec<PrepareRequest>) -> Result<Vec<Vec<Mount>>> {
        for request in &requests {
            self.record_with_parent(&request.key, request.parent.as_deref())
                .await?;
        }
        self.inner.prepare_all(requests).await
    }
    async fn commit_all(&self, requests: Vec<CommitRequest>) -> Result<()> {
        for request in &requests {
            self.record_with_parent(&request.name, request.opts.parent.as_deref())
                .await?;
        }
        let keys: Vec<String> = requests.iter().map(|r| r.key.clone()).collect();
        self.inner.commit_all(requests).await?;
        for key in &keys {
            self.let_go(key).await?;
        }
        Ok(())
    }
    async fn remove(&self, key: &str) -> Result<()> {
        self.inner.remove(key).await?;
        self.let_go(key).await
    }
    async fn walk(&self, filters: &[&str]) -> Result<Vec<Info>> {
        self.inner.walk(filters).await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
    fn can_rebase(&self) -> bool {
        self.inner.can_rebase()
    }
    async fn cleanup(&self, dry_run: bool) -> Result<crate::Cleanup> {
        self.inner.cleanup(dry_run).await
    }
}
