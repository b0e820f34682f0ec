//! Unpack: an image's layers applied, in order, into snapshots named by their
//! chain IDs, so the top one is the image's root filesystem.

use std::time::Instant;

use ocidist_content::{Descriptor, Digest, Provider, ProviderExt};
use ocidist_images::manifest;
use ocidist_images::platforms::Matcher;
use tokio::sync::mpsc::UnboundedSender;

use crate::apply::{ApplyOptions, apply_layer};
use crate::base::tempfile_name;
use crate::mount::ApplyTarget;
use crate::{Error, Labels, Result, Snapshotter};

/// The label containerd's garbage collector reads to keep a layer's
/// uncompressed digest with its snapshot.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

/// Progress of an [`unpack`], as data.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum UnpackEvent {
    /// The layer's snapshot already exists.
    Exists {
        /// The layer blob.
        layer: Descriptor,
        /// Its chain ID (the snapshot's name).
        chain_id: Digest,
    },
    /// Applying the layer started.
    Unpacking {
        /// The layer blob.
        layer: Descriptor,
    },
    /// The layer is applied, checked and committed.
    Unpacked {
        /// The layer blob.
        layer: Descriptor,
        /// Its chain ID.
        chain_id: Digest,
        /// How long applying and committing took.
        seconds: f64,
    },
}

/// How the keys of the active snapshots [`unpack`] applies layers into begin:
/// `extract-<chain ID>-<random>`. [`gc::prune`](crate::gc::prune) removes
/// old ones, left by an unpack that was killed.
pub const EXTRACT_KEY_PREFIX: &str = "extract-";

/// Options for [`unpack`].
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// How to apply layers (privileges, overlay xattrs).
    pub apply: ApplyOptions,
    /// Where to report progress.
    pub events: Option<UnboundedSender<UnpackEvent>>,
    /// Labels for every committed layer snapshot (a GC root, say).
    pub labels: Labels,
}

/// Unpacks the image `image` (a manifest, or an index resolved with
/// `matcher`) from `provider` into `snapshotter`; returns the chain ID of
/// the top layer, the snapshot to `prepare` or `view` a root filesystem on.
///
/// Layers whose snapshot exists are skipped, so a rerun after a crash resumes.
/// Each layer is applied into an active snapshot with a unique key and
/// committed under its chain ID; if another process committed that chain ID
/// first, its snapshot is used and ours removed, so concurrent unpacks of one
/// image both succeed. A diff ID that does not match the image config fails
/// with [`Error::DiffIdMismatch`] and commits nothing.
pub async fn unpack<P, S>(
    image: &Descriptor,
    provider: &P,
    snapshotter: &S,
    matcher: &dyn Matcher,
    options: UnpackOptions,
) -> Result<Digest>
where
    P: Provider + ?Sized,
    S: Snapshotter + ?Sized,
{
    let manifest = manifest::manifest(provider, image, matcher).await?;
    let diff_ids = manifest::diff_ids(provider, image, matcher).await?;
    let layers = &manifest.layers;
    if layers.len() != diff_ids.len() {
        return Err(Error::InvalidArgument(format!(
            "image {}: {} layers but {} diff IDs in its config",
            image.digest(),
            layers.len(),
            diff_ids.len()
        )));
    }
    if layers.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "image {}: no layers",
            image.digest()
        )));
    }
    let chain_ids = manifest::chain_ids(&diff_ids);
    // The first missing layer: everything below it is already unpacked.
    let mut first_missing = layers.len();
    for (i, chain_id) in chain_ids.iter().enumerate().rev() {
        match snapshotter.stat(chain_id.as_ref()).await {
            Ok(_) => break,
            Err(e) if e.is_not_found() => first_missing = i,
            Err(e) => return Err(e),
        }
    }
    let send = |event: UnpackEvent| {
        if let Some(events) = &options.events {
            let _ = events.send(event);
        }
    };
    for i in 0..first_missing {
        send(UnpackEvent::Exists {
            layer: layers[i].clone(),
            chain_id: chain_ids[i].clone(),
        });
    }
    for i in first_missing..layers.len() {
        let started = Instant::now();
        send(UnpackEvent::Unpacking {
            layer: layers[i].clone(),
        });
        let parent = i.checked_sub(1).map(|p| chain_ids[p].to_string());
        unpack_layer(
            provider,
            snapshotter,
            &layers[i],
            &diff_ids[i],
            &chain_ids[i],
            parent.as_deref(),
            &options,
        )
        .await?;
        send(UnpackEvent::Unpacked {
            layer: layers[i].clone(),
            chain_id: chain_ids[i].clone(),
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Ok(chain_ids[chain_ids.len() - 1].clone())
}

async fn unpack_layer<P, S>(
    provider: &P,
    snapshotter: &S,
    layer: &Descriptor,
    diff_id: &Digest,
    chain_id: &Digest,
    parent: Option<&str>,
    options: &UnpackOptions,
) -> Result<()>
where
    P: Provider + ?Sized,
    S: Snapshotter + ?Sized,
{
    let key = tempfile_name(
        std::path::Path::new(""),
        &format!("{EXTRACT_KEY_PREFIX}{chain_id}-"),
    )
    .to_string_lossy()
    .into_owned();
    let mounts = match snapshotter.prepare(&key, parent, Labels::new()).await {
        Ok(mounts) => mounts,
        Err(e) if e.is_already_exists() => return Ok(()),
        Err(e) => return Err(e),
    };
    let result = async {
        let target = ApplyTarget::from_mounts(&mounts)?;
        let reader = provider.reader(layer).await?;
        let applied = apply_layer(
            &target,
            reader,
            Some(layer.media_type().as_ref()),
            options.apply.clone(),
        )
        .await
        .map_err(|e| e.in_layer(layer.digest()))?;
        if &applied.diff_id != diff_id {
            return Err(Error::DiffIdMismatch {
                layer: layer.digest().to_string(),
                expected: diff_id.to_string(),
                actual: applied.diff_id.to_string(),
            });
        }
        let mut labels = options.labels.clone();
        labels.insert(UNCOMPRESSED_LABEL.into(), diff_id.to_string());
        snapshotter.commit(chain_id.as_ref(), &key, labels).await
    }
    .await;
    match result {
        Ok(()) => Ok(()),
        // Another unpack of the same image got there first: use its layer.
        Err(e) if e.is_already_exists() => {
            let _ = snapshotter.remove(&key).await;
            Ok(())
        }
        Err(e) => {
            let _ = snapshotter.remove(&key).await;
            Err(e)
        }
    }
}
