//! The `Handler` trait and the two ways to run one over an image graph.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::{BoxFuture, try_join_all};
use oci_spec::image::Descriptor;
use tokio::sync::Semaphore;

use crate::{Error, Result};

/// How many levels of descriptors [`walk`] and [`dispatch`] follow: an image
/// is at most a few (an index, its manifests, their blobs; an index of
/// indexes now and then). A deeper graph is hostile or broken, and following
/// it would only exhaust the stack.
pub const MAX_DEPTH: usize = 32;

/// Fails if the children of `parent`, at `depth`, would be one level too deep.
fn check_depth(parent: &Descriptor, depth: usize) -> Result<()> {
    if depth < MAX_DEPTH {
        return Ok(());
    }
    Err(Error::InvalidDocument {
        digest: parent.digest().clone(),
        media_type: parent.media_type().to_string(),
        reason: format!("its children are more than {MAX_DEPTH} levels deep"),
    })
}

/// What a handler says about a descriptor.
#[derive(Debug, Clone, PartialEq)]
pub enum Flow {
    /// Go on; these are the descriptor's children, to be handled next.
    Children(Vec<Descriptor>),
    /// In a [`Chain`], run no further handler for this descriptor; the children
    /// gathered so far are kept. Alone, it means no children.
    Stop,
    /// Prune: run no further handler and walk no children of this descriptor.
    Skip,
}

impl Flow {
    /// No children.
    pub fn leaf() -> Self {
        Flow::Children(Vec::new())
    }
}

/// Does something with one descriptor of an image graph and says which
/// descriptors come next (usually its children).
///
/// ```
/// use ocidist_images::{Flow, Handler, handler_fn, walk};
/// use ocidist_content::{descriptor, sha256_of};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ocidist_images::Result<()> {
/// let total = AtomicU64::new(0);
/// let count_bytes = handler_fn(|desc| {
///     total.fetch_add(desc.size(), Ordering::Relaxed);
///     async { Ok(Flow::leaf()) }
/// });
/// let blob = descriptor(sha256_of(b"x"), 1);
/// walk(&count_bytes, &[blob.clone(), blob]).await?;
/// assert_eq!(total.load(Ordering::Relaxed), 2);
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait Handler: Send + Sync {
    /// Handles `desc`.
    async fn handle(&self, desc: &Descriptor) -> Result<Flow>;
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for Arc<H> {
    async fn handle(&self, desc: &Descriptor) -> Result<Flow> {
        (**self).handle(desc).await
    }
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for Box<H> {
    async fn handle(&self, desc: &Descriptor) -> Result<Flow> {
        (**self).handle(desc).await
    }
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for &H {
    async fn handle(&self, desc: &Descriptor) -> Result<Flow> {
        (**self).handle(desc).await
    }
}

/// A [`Handler`] made from a closure; see [`handler_fn`].
#[derive(Debug, Clone)]
pub struct HandlerFn<F>(F);

/// Makes a handler from a closure that takes the descriptor by value and
/// returns a future of the [`Flow`].
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Descriptor) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Flow>> + Send,
{
    HandlerFn(f)
}

#[async_trait]
impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Descriptor) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Flow>> + Send,
{
    async fn handle(&self, desc: &Descriptor) -> Result<Flow> {
        (self.0)(desc.clone()).await
    }
}

/// Several handlers run in order on each descriptor; see [`handlers`].
#[derive(Clone)]
pub struct Chain {
    handlers: Vec<Arc<dyn Handler>>,
}

/// Runs `list` in order on each descriptor and concatenates their children.
/// A [`Flow::Stop`] ends the chain for that descriptor (children so far are
/// kept); a [`Flow::Skip`] ends it and prunes the descriptor's children.
pub fn handlers(list: Vec<Arc<dyn Handler>>) -> Chain {
    Chain { handlers: list }
}

#[async_trait]
impl Handler for Chain {
    async fn handle(&self, desc: &Descriptor) -> Result<Flow> {
        let mut children = Vec::new();
        for handler in &self.handlers {
            match handler.handle(desc).await? {
                Flow::Children(more) => children.extend(more),
                Flow::Stop => break,
                Flow::Skip => return Ok(Flow::Skip),
            }
        }
        Ok(Flow::Children(children))
    }
}

/// Runs `handler` depth first over `descs` and their children, one at a time.
///
/// A descriptor is handled once for every path that reaches it, as
/// containerd's `Walk` does; for a graph from a registry or a layout, wrap
/// the handler in [`once_per_blob`](crate::wrappers::once_per_blob), or a
/// small hostile graph makes the paths billions. Fails with
/// [`Error::InvalidDocument`] on a graph more than [`MAX_DEPTH`] levels deep.
pub async fn walk<H: Handler + ?Sized>(handler: &H, descs: &[Descriptor]) -> Result<()> {
    walk_boxed(handler, descs, 1).await
}

fn walk_boxed<'a, H: Handler + ?Sized>(
    handler: &'a H,
    descs: &'a [Descriptor],
    depth: usize,
) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        for desc in descs {
            if let Flow::Children(children) = handler.handle(desc).await?
                && !children.is_empty()
            {
                check_depth(desc, depth)?;
                walk_boxed(handler, &children, depth + 1).await?;
            }
        }
        Ok(())
    })
}

/// Runs `handler` over `descs` and their children with siblings concurrent.
///
/// At most `limit` handler calls run at once (no limit if `None`). A call holds
/// its slot only while it runs, never while its children are dispatched, so a
/// deep graph cannot deadlock. The first error cancels everything still
/// running and is the error returned. Siblings share the caller's task: I/O
/// overlaps; CPU-heavy handlers should use `spawn_blocking`, as the content
/// store does for hashing and writing. Like [`walk`], it handles a
/// descriptor once per path to it (see there, and
/// [`once_per_blob`](crate::wrappers::once_per_blob)), and refuses a graph
/// more than [`MAX_DEPTH`] levels deep.
pub async fn dispatch<H: Handler + ?Sized>(
    handler: &H,
    limit: Option<usize>,
    descs: &[Descriptor],
) -> Result<()> {
    let slots = limit.map(|n| Semaphore::new(n.max(1)));
    dispatch_boxed(handler, slots.as_ref(), descs, 1).await
}

fn dispatch_boxed<'a, H: Handler + ?Sized>(
    handler: &'a H,
    slots: Option<&'a Semaphore>,
    descs: &'a [Descriptor],
    depth: usize,
) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let siblings = descs.iter().map(|desc| async move {
            let flow = {
                let _slot = match slots {
                    Some(slots) => Some(
                        slots
                            .acquire()
                            .await
                            .expect("the semaphore is never closed"),
                    ),
                    None => None,
                };
                handler.handle(desc).await?
            };
            match flow {
                Flow::Children(children) if !children.is_empty() => {
                    check_depth(desc, depth)?;
                    dispatch_boxed(handler, slots, &children, depth + 1).await
                }
                _ => Ok(()),
            }
        });
        try_join_all(siblings).await.map(drop)
    })
}
