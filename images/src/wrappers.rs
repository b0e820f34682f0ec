//! Handlers that compose, in the style of tower's middleware: each wraps an
//! inner handler and changes what it returns.
//!
//! ```text
//! limit_manifests(1, &host,                 // keep the best manifest of an index
//!     filter_platforms(&host,               // drop manifests for other platforms
//!         set_children_labels(store,        // record GC references on each parent
//!             children_handler(store))))    // decode children from the store
//! ```
//!
//! Labels go on inside the filters, as containerd puts them: an index
//! records every manifest, fetched or not. Outside them, a later fetch of
//! another platform would replace the label of the first, and garbage
//! collection would take that platform's blobs.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use oci_spec::image::Descriptor;
use ocidist_content::{Info, Labels, Manager, Provider};

use crate::Result;
use crate::handler::{Flow, Handler};
use crate::manifest::{self, descriptor_platform};
use crate::media_types::{self, Kind};
use crate::platforms::Matcher;

/// Decodes each descriptor's children from a provider; see [`children_handler`].
#[derive(Debug, Clone)]
pub struct ChildrenHandler<P> {
    provider: P,
}

/// A handler whose children are those the manifest or index names (read from
/// `provider`); other descriptors have none.
pub fn children_handler<P: Provider>(provider: P) -> ChildrenHandler<P> {
    ChildrenHandler { provider }
}

#[async_trait]
impl<P: Provider> Handler for ChildrenHandler<P> {
    async fn handle(&self, desc: &Descriptor) -> Result<Flow> {
        Ok(Flow::Children(
            manifest::children(&self.provider, desc).await?,
        ))
    }
}

/// Drops children for other platforms; see [`filter_platforms`].
#[derive(Debug, Clone)]
pub struct FilterPlatforms<H, M> {
    inner: H,
    matcher: M,
}

/// Wraps `inner` so that children declaring a platform `matcher` rejects are
/// dropped; children that declare none are kept.
pub fn filter_platforms<H: Handler, M: Matcher>(matcher: M, inner: H) -> FilterPlatforms<H, M> {
    FilterPlatforms { inner, matcher }
}

#[async_trait]
impl<H: Handler, M: Matcher> Handler for FilterPlatforms<H, M> {
    async fn handle(&self, desc: &Descriptor) -> Result<Flow> {
        Ok(match self.inner.handle(desc).await? {
            Flow::Children(children) => Flow::Children(
                children
                    .into_iter()
                    .filter(|child| {
                        descriptor_platform(child).is_none_or(|p| self.matcher.matches(&p))
                    })
                    .collect(),
            ),
            other => other,
        })
    }
}

/// Keeps the best manifests of an index; see [`limit_manifests`].
#[derive(Debug, Clone)]
pub struct LimitManifests<H, M> {
    inner: H,
    matcher: M,
    limit: usize,
}

/// Wraps `inner` so that an index's children are ordered best match first
/// (by `matcher`; no platform, or no match, last; ties keep their order) and
/// only the first `limit` are kept (all if `limit` is 0). It orders and cuts;
/// it does not drop non-matching platforms (compose with
/// [`filter_platforms`]). An index left with nothing when a limit is set is
/// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound): no match for the platform.
pub fn limit_manifests<H: Handler, M: Matcher>(
    limit: usize,
    matcher: M,
    inner: H,
) -> LimitManifests<H, M> {
    LimitManifests {
        inner,
        matcher,
        limit,
    }
}

#[async_trait]
impl<H: Handler, M: Matcher> Handler for LimitManifests<H, M> {
    async fn handle(&self, desc: &Descriptor) -> Result<Flow> {
        let flow = self.inner.handle(desc).await?;
        let Flow::Children(mut children) = flow else {
            return Ok(flow);
        };
        if media_types::kind(desc.media_type().as_ref()) == Kind::Index {
            children.sort_by_key(|child| {
                descriptor_platform(child)
                    .and_then(|p| self.matcher.rank(&p))
                    .unwrap_or(usize::MAX)
            });
            if self.limit > 0 {
                if children.is_empty() {
                    return Err(crate::Error::NoMatchingManifest {
                        digest: desc.digest().clone(),
                        platform: self.matcher.describe(),
                    });
                }
                children.truncate(self.limit);
            }
        }
        Ok(Flow::Children(children))
    }
}

/// Records each parent's children as GC labels; see [`set_children_labels`].
#[derive(Debug, Clone)]
pub struct SetChildrenLabels<H, S> {
    inner: H,
    manager: S,
}

/// Wraps `inner` so that the children it returns are recorded on the parent
/// blob as containerd's GC reference labels, which keep them alive:
/// `containerd.io/gc.ref.content.config` for a config (`config1`, ... for
/// more), `containerd.io/gc.ref.content.m.<n>` for manifests,
/// `containerd.io/gc.ref.content.l.<n>` for layers and
/// `containerd.io/gc.ref.content.<n>` for anything else, nested indexes included.
/// The labels replace the parent's earlier ones, so wrap the handler that
/// returns *all* the children, below any filter (see the [module](self) docs).
pub fn set_children_labels<H: Handler, S: Manager>(
    manager: S,
    inner: H,
) -> SetChildrenLabels<H, S> {
    SetChildrenLabels { inner, manager }
}

/// The GC labels naming `children` of one parent, as containerd writes them.
pub fn children_labels(children: &[Descriptor]) -> Labels {
    let mut labels = Labels::new();
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for child in children {
        let prefix = match media_types::kind(child.media_type().as_ref()) {
            Kind::Config => GC_REF_CONFIG,
            Kind::Manifest => "containerd.io/gc.ref.content.m.",
            Kind::Layer => "containerd.io/gc.ref.content.l.",
            _ => "containerd.io/gc.ref.content.",
        };
        let n = counts.entry(prefix).or_default();
        // A prefix ending in '.' always takes its number; `config` only from the second.
        let key = if *n > 0 || prefix.ends_with('.') {
            format!("{prefix}{n}")
        } else {
            prefix.to_string()
        };
        labels.insert(key, child.digest().to_string());
        *n += 1;
    }
    labels
}

/// The label that names a manifest's config.
pub const GC_REF_CONFIG: &str = "containerd.io/gc.ref.content.config";
/// Every content GC reference label starts with this.
pub const GC_REF_CONTENT_PREFIX: &str = "containerd.io/gc.ref.content.";

#[async_trait]
impl<H: Handler, S: Manager> Handler for SetChildrenLabels<H, S> {
    async fn handle(&self, desc: &Descriptor) -> Result<Flow> {
        let flow = self.inner.handle(desc).await?;
        if let Flow::Children(children) = &flow
            && !children.is_empty()
        {
            let labels = children_labels(children);
            let fieldpaths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
            let fieldpaths: Vec<&str> = fieldpaths.iter().map(String::as_str).collect();
            let info = Info {
                digest: desc.digest().clone(),
                size: desc.size(),
                created_at: SystemTime::UNIX_EPOCH,
                updated_at: SystemTime::UNIX_EPOCH,
                labels,
            };
            self.manager.update(info, &fieldpaths).await?;
        }
        Ok(flow)
    }
}

/// Handles each blob once; see [`once_per_blob`].
#[derive(Debug)]
pub struct OncePerBlob<H> {
    inner: H,
    handled: Mutex<HashSet<(String, String)>>,
}

/// A handler that hands `inner` each blob (digest and media type) only the
/// first time it comes, and answers [`Flow::Skip`] when it comes again: a
/// layer that two manifests share, or a document listed twice.
///
/// [`walk`](crate::walk) and [`dispatch`](crate::dispatch) visit a
/// descriptor once for every path to it, as containerd's do, and paths can
/// be astronomically many: an index listing one index a thousand times,
/// which lists one manifest a thousand times, is a few hundred kilobytes
/// and a million paths. Wrapped in this, a walk's work grows with the
/// distinct blobs instead. Use it around any pipeline that walks a graph a
/// registry or a layout supplied, unless the handler must see every path.
/// One wrapper remembers for as long as it lives: make one per walk.
pub fn once_per_blob<H: Handler>(inner: H) -> OncePerBlob<H> {
    OncePerBlob {
        inner,
        handled: Mutex::new(HashSet::new()),
    }
}

#[async_trait]
impl<H: Handler> Handler for OncePerBlob<H> {
    async fn handle(&self, desc: &Descriptor) -> Result<Flow> {
        // The media type is part of the key: the same bytes described as
        // a manifest have children that, described as a layer, they do not.
        let key = (
            desc.digest().to_string(),
            desc.media_type().as_ref().to_string(),
        );
        let first = self
            .handled
            .lock()
            .expect("the set is never left half-changed")
            .insert(key);
        if !first {
            return Ok(Flow::Skip);
        }
        self.inner.handle(desc).await
    }
}
