//! Garbage collection of content no image needs.
//!
//! Mark: start from every image's target, every blob labelled
//! `containerd.io/gc.root`, and every blob created or updated within the
//! grace period; follow each blob's `containerd.io/gc.ref.content.*` labels,
//! or, for a blob without them, decode it as a manifest or index. A young
//! blob is a root because a pull in progress has not named its image yet: the
//! manifest it just fetched, or found and relabelled, must keep the older
//! layers it reuses (containerd's pulls hold a lease for this). The caller's
//! own roots ([`GcOptions::roots`]) are marked too: the blobs the live leases
//! hold ([`ocidist_content::lease`]), which keeps a pull's blobs however long
//! it runs. The grace period alone does not make a collection safe beside a
//! pull: an old, unreferenced layer the pull found present (and so skipped)
//! is not young, and may go between the collection's walk and the pull's
//! naming of its image. Pass the leases' roots when pulls may run.
//! Sweep: delete every unmarked blob (all older than the grace period), and every
//! ingest untouched for longer than the ingest age limit. An ingest a writer
//! holds is never removed: aborting it answers `Unavailable`, and it is skipped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use oci_spec::image::{Descriptor, Digest, MediaType};
use ocidist_content::{Info, IngestManager, Manager, Provider};

use crate::Result;
use crate::manifest::{self, MAX_MANIFEST_SIZE};
use crate::media_types::{self, Kind};
use crate::store::ImageStore;
use crate::wrappers::GC_REF_CONTENT_PREFIX;

/// The label that makes a blob a root of its own.
pub const GC_ROOT: &str = "containerd.io/gc.root";

/// How a collection runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcOptions {
    /// Report what would be removed, remove nothing.
    pub dry_run: bool,
    /// Unreferenced blobs younger than this are kept: a pull records its image
    /// only once every blob is in, and its blobs must survive until then.
    pub grace: Duration,
    /// Ingests not written for this long are aborted; `None` keeps them all.
    pub ingest_max_age: Option<Duration>,
    /// More roots, kept with all they reference, such as the blobs the live
    /// leases hold ([`Held::content`](ocidist_content::lease::Held::content));
    /// hold them until the collection returns.
    pub roots: HashSet<Digest>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            grace: Duration::from_secs(15 * 60),
            ingest_max_age: Some(Duration::from_secs(24 * 3600)),
            roots: HashSet::new(),
        }
    }
}

/// What a collection removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed, with their sizes.
    pub blobs: Vec<(Digest, u64)>,
    /// Refs of the ingests removed.
    pub ingests: Vec<String>,
    /// Blobs kept: referenced from an image or a root, or young (and what
    /// they reference).
    pub reachable: usize,
    /// Of those, the ones kept only for their youth (or a young blob's
    /// reference to them): no image or root needs them, and a collection
    /// after the grace period removes them.
    pub young: usize,
}

impl GcReport {
    /// Bytes freed by the removed blobs.
    pub fn bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, size)| size).sum()
    }
}

/// Collects the content in `content` that no image in `images` needs.
pub async fn gc<S, I>(content: &S, images: &I, opts: &GcOptions) -> Result<GcReport>
where
    S: Provider + Manager + IngestManager + ?Sized,
    I: ImageStore + ?Sized,
{
    let mut infos = HashMap::new();
    content
        .walk(&[], &mut |info| {
            infos.insert(info.digest.clone(), info);
            Ok(())
        })
        .await?;

    let mut queue: VecDeque<(Digest, Option<String>)> = VecDeque::new();
    for image in images.list(&[]).await? {
        queue.push_back((
            image.target.digest().clone(),
            Some(image.target.media_type().to_string()),
        ));
        // What the image's own labels pin (a signature, an SBOM), as
        // containerd follows them.
        queue.extend(image.labels.iter().filter_map(|(key, value)| {
            gc_ref_content_kind(key)?;
            Some((Digest::try_from(value.as_str()).ok()?, None))
        }));
    }
    queue.extend(
        infos
            .values()
            .filter(|i| i.labels.contains_key(GC_ROOT))
            .map(|i| (i.digest.clone(), None)),
    );
    queue.extend(opts.roots.iter().map(|digest| (digest.clone(), None)));
    // What images and roots need first, then what only youth keeps: the
    // report tells them apart.
    let mut marked = HashSet::new();
    mark(content, &infos, queue, &mut marked).await?;
    let in_use = marked.len();
    let now = SystemTime::now();
    let young = infos.values().filter(|info| {
        now.duration_since(info.created_at.max(info.updated_at))
            .unwrap_or(Duration::ZERO)
            < opts.grace
    });
    let queue = young.map(|info| (info.digest.clone(), None)).collect();
    mark(content, &infos, queue, &mut marked).await?;

    let mut report = GcReport {
        reachable: marked.len(),
        young: marked.len() - in_use,
        ..GcReport::default()
    };
    let mut unmarked: Vec<&Info> = infos
        .values()
        .filter(|i| !marked.contains(&i.digest))
        .collect();
    unmarked.sort_by_key(|i| i.digest.to_string());
    for info in unmarked {
        if !opts.dry_run {
            match content.delete(&info.digest).await {
                Err(e) if !e.is_not_found() => return Err(e.into()),
                _ => {}
            }
        }
        report.blobs.push((info.digest.clone(), info.size));
    }

    if let Some(max_age) = opts.ingest_max_age {
        for status in content.list_statuses(&[]).await? {
            let idle = now
                .duration_since(status.updated_at)
                .unwrap_or(Duration::ZERO);
            if idle < max_age {
                continue;
            }
            if opts.dry_run {
                // What the real run would skip, said without taking it: a
                // store that cannot tell lists every idle ingest.
                match content.is_being_written(&status.reference).await {
                    Ok(false) => {}
                    Ok(true) => continue,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) if e.kind() == ocidist_content::ErrorKind::Unimplemented => {}
                    Err(e) => return Err(e.into()),
                }
            } else {
                match content.abort(&status.reference).await {
                    Ok(()) => {}
                    // Being written, or gone already: not ours to remove.
                    Err(e) if e.is_unavailable() || e.is_not_found() => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            report.ingests.push(status.reference);
        }
    }
    Ok(report)
}

/// What a content reference label names (`config`, `l.0`, ...; empty for
/// the bare key), or `None` for another label. containerd takes the bare
/// `containerd.io/gc.ref.content` and any key under it after `.` or `/`.
fn gc_ref_content_kind(key: &str) -> Option<&str> {
    let bare = GC_REF_CONTENT_PREFIX.trim_end_matches('.');
    let rest = key.strip_prefix(bare)?;
    if rest.is_empty() {
        return Some("");
    }
    rest.strip_prefix('.').or_else(|| rest.strip_prefix('/'))
}

/// The blobs `info` references: from its GC labels if it has any, otherwise
/// by decoding it as a manifest or index (sniffing the type when unknown).
/// Marks each blob in `queue` that the store has, and all it references,
/// in `marked`.
async fn mark<S: Provider + ?Sized>(
    content: &S,
    infos: &HashMap<Digest, Info>,
    mut queue: VecDeque<(Digest, Option<String>)>,
    marked: &mut HashSet<Digest>,
) -> Result<()> {
    while let Some((digest, media_type)) = queue.pop_front() {
        // Only what the store has is counted (an index's manifests left
        // out by a one-platform fetch are not).
        let Some(info) = infos.get(&digest) else {
            continue;
        };
        if !marked.insert(digest) {
            continue;
        }
        queue.extend(references(content, info, media_type).await?);
    }
    Ok(())
}

async fn references<S: Provider + ?Sized>(
    content: &S,
    info: &Info,
    media_type: Option<String>,
) -> Result<Vec<(Digest, Option<String>)>> {
    let from_labels: Vec<(Digest, Option<String>)> = info
        .labels
        .iter()
        .filter_map(|(key, value)| {
            let kind = gc_ref_content_kind(key)?;
            let digest = Digest::try_from(value.as_str()).ok()?;
            // The label says what the child is; configs and layers have no
            // children, so they need not be read to find out.
            let hint = if kind == "config" {
                Some(media_types::OCI_CONFIG.to_string())
            } else if kind.starts_with("l.") {
                Some(media_types::OCI_LAYER.to_string())
            } else {
                None
            };
            Some((digest, hint))
        })
        .collect();
    if !from_labels.is_empty() {
        return Ok(from_labels);
    }
    if info.size > MAX_MANIFEST_SIZE {
        return Ok(Vec::new());
    }
    let media_type = match media_type {
        Some(media_type) => media_type,
        None => {
            let desc = ocidist_content::descriptor(info.digest.clone(), info.size);
            let body = match ocidist_content::read_blob(content, &desc, MAX_MANIFEST_SIZE).await {
                Ok(body) => body,
                // Deleted since the walk: nothing to follow.
                Err(e) if e.is_not_found() => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            match manifest::sniff_media_type(&body) {
                Some(media_type) => media_type,
                None => return Ok(Vec::new()),
            }
        }
    };
    if !matches!(media_types::kind(&media_type), Kind::Manifest | Kind::Index) {
        return Ok(Vec::new());
    }
    let desc = Descriptor::new(
        MediaType::from(media_type.as_str()),
        info.size,
        info.digest.clone(),
    );
    // A blob that does not decode (or is a schema 1 manifest under an OCI
    // type), or that a concurrent delete took, references nothing; it must
    // not stop the collection.
    let children = match manifest::children(content, &desc).await {
        Ok(children) => children,
        Err(e)
            if matches!(
                e.kind(),
                crate::ErrorKind::InvalidArgument
                    | crate::ErrorKind::Unimplemented
                    | crate::ErrorKind::NotFound
            ) =>
        {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    Ok(children
        .into_iter()
        .map(|c| (c.digest().clone(), Some(c.media_type().to_string())))
        .collect())
}
