//! OCI image layouts, on the library's [`ocidist::layout`]: `export` writes
//! one that skopeo and umoci read; `import` reads one they wrote; `unpack`
//! unpacks an image straight from one (as `umoci unpack` does), without
//! copying its blobs into the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use ocidist::content::lease::{Lease, LeasedStore};
use ocidist::images::manifest;
use ocidist::images::platforms;
use ocidist::layout::{self, ExportOptions, ImportOptions, OciLayout};
use ocidist::snapshot::lease::LeasedSnapshotter;
use ocidist::snapshot::{Snapshotter, UnpackOptions, unpack};

use crate::image::{find_image, local_target};
use crate::output::report;
use crate::{CmdResult, Failure, Stores};

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The image (a name in the image store, or a manifest digest).
    reference: String,
    /// The layout directory (created, or added to).
    dir: PathBuf,
    /// The name in the layout (`skopeo inspect oci:DIR:NAME`); default: the
    /// image's tag, with its whole name beside it as containerd writes it
    /// (`io.containerd.image.name`); none for a digest.
    #[arg(long)]
    name: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct UnpackArgs {
    /// `DIR[:NAME]`: the layout, and the image's ref name in its `index.json`
    /// (optional when it holds one image).
    layout: String,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The layout directory.
    dir: PathBuf,
    /// Name the images `PREFIX` + the layout's ref name
    /// (`org.opencontainers.image.ref.name`, such as `v1`). Without it, an
    /// image is named by containerd's whole name where the layout has one
    /// (`io.containerd.image.name`), else by its ref name.
    #[arg(long)]
    prefix: Option<String>,
}

/// A layout error, with what to do about it where that is this program's
/// to say.
fn with_remedy(e: layout::Error) -> Box<dyn std::error::Error + Send + Sync> {
    let report = ocidist::content::Report::new(&e);
    match &e {
        layout::Error::Corrupt { digest, .. } => {
            format!("{report}: remove it (dist delete {digest}) and fetch the image again").into()
        }
        layout::Error::Missing { .. } => {
            format!("{report} (`images check` lists what the image lacks; fetch it again)").into()
        }
        layout::Error::SeveralImages { .. } => format!("{report}, as DIR:NAME").into(),
        _ => e.into(),
    }
}

/// Copies an image out of the store into a layout. `lease` keeps what it
/// copies through a prune in another process; `None` on a read-only store,
/// which no prune here can change (nor can a lease be written in it).
pub(crate) async fn export(stores: &Stores, lease: Option<Lease>, args: ExportArgs) -> CmdResult {
    let what = format!("export {} {}", args.reference, args.dir.display());
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| Failure::new(what.clone(), e);
    let target = local_target(stores, &args.reference).await.map_err(fail)?;
    if let Some(lease) = &lease {
        lease
            .add_content(target.digest())
            .await
            .map_err(|e| fail(e.into()))?;
    }
    // `--name` as given; an image's tag and whole name; a digest, nothing
    // (its entry unnamed, as OCI allows).
    let options = match &args.name {
        Some(name) => ExportOptions::new().ref_name(name),
        None if crate::content::parse_digest(&args.reference).is_ok() => ExportOptions::new(),
        None => ExportOptions::for_image(
            &find_image(stores, &args.reference)
                .await
                .map_err(fail)?
                .name,
        ),
    };
    let exported = layout::export(&stores.content, &target, &args.dir, &options)
        .await
        .map_err(|e| fail(with_remedy(e)))?;
    if !exported.left_out.is_empty() {
        let platforms: Vec<String> = exported
            .left_out
            .iter()
            .map(|d| match manifest::descriptor_platform(d) {
                Some(platform) => platform.to_string(),
                None => d.digest().to_string(),
            })
            .collect();
        eprintln!(
            "dist: export: the store lacks {} of the index's manifests ({}): the layout \
             holds the other platforms only (fetch --all-platforms first for all)",
            exported.left_out.len(),
            platforms.join(", ")
        );
    }
    let name = options.image_name.as_ref().or(options.ref_name.as_ref());
    for previous in &exported.replaced {
        eprintln!(
            "dist: export: {} named {previous} in the layout; it now names {}",
            name.map_or("", String::as_str),
            target.digest()
        );
    }
    report!(
        "{} {} ({} blobs)",
        name.map_or("(unnamed)", String::as_str),
        target.digest(),
        exported.blobs
    );
    Ok(())
}

pub(crate) async fn import(stores: &Stores, lease: Lease, args: ImportArgs) -> CmdResult {
    let what = format!("import {}", args.dir.display());
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| Failure::new(what.clone(), e);
    let content = LeasedStore::new(stores.content.clone(), lease);
    let opened = OciLayout::open(&args.dir).map_err(|e| fail(e.into()))?;
    let options = match &args.prefix {
        Some(prefix) => ImportOptions::new().prefix(prefix),
        None => ImportOptions::new(),
    };
    let imported = layout::import(&content, &stores.images, &opened, &options)
        .await
        .map_err(|e| fail(e.into()))?;
    for (path, why) in &imported.skipped {
        eprintln!("dist: import: skipping {}: {why}", path.display());
    }
    for image in &imported.images {
        let digest = image.target.digest();
        match (&image.name, &image.refused_name) {
            (Some(name), _) => report!("{name} {digest}"),
            (None, Some(refused)) => eprintln!(
                "dist: import: {digest} left unnamed: its name is not a name ({} bytes, or with control characters)",
                refused.len()
            ),
            (None, None) => report!("(unnamed) {digest}"),
        }
    }
    Ok(())
}

/// `DIR[:NAME]`, split at the first `:` as skopeo's `oci:` transport does
/// (a name may hold colons and slashes), unless the whole text is a layout.
fn split_layout(text: &str) -> (PathBuf, Option<String>) {
    // A layout directory whose own name holds a colon (a timestamp) is
    // taken whole.
    if Path::new(text).join("index.json").is_file() {
        return (PathBuf::from(text), None);
    }
    match text.split_once(':') {
        Some((dir, name)) if !dir.is_empty() && !name.is_empty() => {
            (PathBuf::from(dir), Some(name.to_string()))
        }
        _ => (PathBuf::from(text), None),
    }
}

pub(crate) async fn unpack_cmd(
    snapshotter: &Arc<dyn Snapshotter>,
    lease: Lease,
    remote: &crate::image::Remote,
    args: UnpackArgs,
) -> CmdResult {
    let snapshotter = &LeasedSnapshotter::new(snapshotter.clone(), lease);
    let platform = &remote.platform;
    let what = format!("unpack {}", args.layout);
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| Failure::new(what.clone(), e);
    let (dir, name) = split_layout(&args.layout);
    let opened = OciLayout::open(dir).map_err(|e| fail(e.into()))?;
    let desc = opened
        .find(name.as_deref())
        .map_err(|e| fail(with_remedy(e)))?;
    let progress = crate::progress::Progress::start(None);
    let options = UnpackOptions {
        events: Some(progress.unpack_events()),
        ..remote.unpack_options()
    };
    let chain_id = unpack(
        &desc,
        &opened,
        snapshotter,
        &platforms::only(platform),
        options,
    )
    .await;
    progress.finish(chain_id.is_ok()).await;
    // The answer, even with --quiet, as `apply` prints its diff ID.
    match chain_id.map_err(|e| fail(e.into()))? {
        Some(chain_id) => crate::output::outln!("{chain_id}"),
        // No snapshot to name, and so nothing on stdout.
        None => eprintln!("dist: {what}: the image has no layers: its root filesystem is empty"),
    }
    Ok(())
}
