//! Commands on images and registries: fetch-object, fetch, push, images, prune.

use std::sync::Arc;

use clap::{Args, Subcommand};
use futures::StreamExt;
use ocidist::content::lease::{Lease, LeasedStore, Leases};
use ocidist::content::{Manager, descriptor, read_blob};
use ocidist::gc::{CollectOptions, collect};
use ocidist::images::platforms::{self, Matcher, Platform};
use ocidist::images::{Image, ImageStore, check, manifest, media_types, size};
use ocidist::remotes::docker::auth::{Credential, Credentials, CredentialsError};
use ocidist::remotes::docker::config::DockerConfig;
use ocidist::remotes::docker::{DockerResolver, PlainHttp, RangedFetch, fetch_object};
use ocidist::remotes::{fetch_image, push_image};
use ocidist::snapshot::Snapshotter;
use tokio::io::AsyncWriteExt;

use crate::output::{self, report};
use crate::progress::Progress;
use crate::{CmdResult, Failure, Stores};

#[derive(Debug, Args)]
pub(crate) struct FetchObjectArgs {
    /// The repository: `[host[:port]/]path`.
    locator: String,
    /// A tag or digest.
    object: String,
    /// Hints such as `mediatype:application/vnd.oci.image.manifest.v1+json`.
    hints: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct FetchArgs {
    /// The image: `[host[:port]/]path[:tag][@digest]`.
    reference: String,
    /// Fetch every platform, not only `--platform`'s.
    #[arg(long)]
    all_platforms: bool,
    /// Blobs fetched at once. 16, as the oci-client crate: small blobs are
    /// bound by the registry's latency, not by bandwidth. (`pull` keeps 8:
    /// its unpack wants the CPU more than extra downloads do.)
    #[arg(long, default_value_t = 16, value_parser = crate::parse_count)]
    concurrency: usize,
}

#[derive(Debug, Args)]
pub(crate) struct PushArgs {
    /// Where to push: `[host[:port]/]path[:tag]`.
    reference: String,
    /// The local image to push (a name in the image store, or the digest of a
    /// manifest or index in the content store); default: `reference`.
    local: Option<String>,
    /// Blobs pushed at once.
    #[arg(long, default_value_t = 4, value_parser = crate::parse_count)]
    concurrency: usize,
}

#[derive(Debug, Args)]
pub(crate) struct ImagesArgs {
    #[command(subcommand)]
    command: Option<ImagesCommand>,
}

#[derive(Debug, Subcommand)]
enum ImagesCommand {
    /// Say whether each image (or the ones named) is complete, or what it lacks.
    Check {
        /// Image names (all if none).
        names: Vec<String>,
    },
    /// Remove image names (the content stays until `dist prune`).
    Rm {
        /// Image names; none is not an error, so that `dist -q images |
        /// xargs dist images rm` is fine with no images.
        names: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep unreferenced blobs and snapshots younger than this: a program
    /// that takes no lease may still need them (dist's own commands take one).
    #[arg(long, default_value = "15m", value_parser = crate::parse_duration)]
    grace: std::time::Duration,
    /// Remove the ingests not written for this long (a killed fetch's, which
    /// the next fetch of the image would resume); one a live writer holds
    /// is never removed.
    #[arg(long, default_value = "24h", value_parser = crate::parse_duration)]
    ingest_max_age: std::time::Duration,
}

/// Platform and transport settings shared by the registry commands.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    pub(crate) plain_http: bool,
    pub(crate) hosts_dir: Option<std::path::PathBuf>,
    /// `--tlscacert`, `--tlscert`, `--tlskey`, `--skip-verify`.
    pub(crate) tls: Tls,
    /// `--user`: credentials for every registry, instead of Docker's.
    pub(crate) user: Option<(String, String)>,
    /// `--ranges`: parallel ranged requests per large blob.
    pub(crate) ranges: Option<usize>,
    pub(crate) platform: Platform,
    /// Whether `--platform` was given (`platform` is the host's if not).
    pub(crate) platform_given: bool,
    /// `--unpack-concurrency`: layers applied at once (overlay).
    pub(crate) unpack_concurrency: usize,
}

/// `--user`: one credential for every registry the command talks to, as
/// ctr's `--user` (they still go only to each registry's own origin and its
/// token service).
#[derive(Debug)]
struct EveryRegistry(Credential);

impl Credentials for EveryRegistry {
    fn get(&self, _host: &str) -> Result<Option<Credential>, CredentialsError> {
        Ok(Some(self.0.clone()))
    }
}

/// TLS settings for every registry (a hosts directory adds per-host ones).
#[derive(Debug, Clone, Default)]
pub(crate) struct Tls {
    pub(crate) ca_files: Vec<std::path::PathBuf>,
    pub(crate) cert: Option<std::path::PathBuf>,
    pub(crate) key: Option<std::path::PathBuf>,
    pub(crate) skip_verify: bool,
}

impl Remote {
    /// Unpack options with `--unpack-concurrency`.
    pub(crate) fn unpack_options(&self) -> ocidist::snapshot::UnpackOptions {
        ocidist::snapshot::UnpackOptions {
            concurrency: self.unpack_concurrency,
            ..Default::default()
        }
    }

    /// The resolver for these settings; fails when a TLS file is unusable.
    pub(crate) fn resolver(&self) -> Result<DockerResolver, Failure> {
        let plain = if self.plain_http {
            PlainHttp::Always
        } else {
            PlainHttp::Loopback
        };
        let credentials: Arc<dyn Credentials> = match &self.user {
            Some((username, secret)) => Arc::new(EveryRegistry(Credential {
                username: username.clone(),
                secret: secret.clone(),
            })),
            // Docker's own credentials (config.json, helpers), as `docker pull`
            // uses. A broken one is said, as Docker says it, and the pull goes
            // on anonymously rather than fail where no credentials are needed.
            None => Arc::new(DockerConfig::load_default().unwrap_or_else(|e| {
                eprintln!(
                    "dist: warning: Docker credentials not loaded: {}",
                    ocidist::content::Report::new(&e)
                );
                DockerConfig::default()
            })),
        };
        let said_for = std::sync::Mutex::new(std::collections::HashSet::new());
        let mut resolver = DockerResolver::new()
            .plain_http(plain)
            .credentials(credentials)
            .on_host_skipped(move |skipped| {
                // A mirror without the image is a partial mirror doing its
                // job (containerd logs that 404 at debug level only).
                if skipped.error.is_not_found() {
                    return;
                }
                // Once per host: a mirror that is down fails every blob's
                // request as it failed the manifest's.
                let first = said_for
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(skipped.host.to_string());
                if first {
                    crate::output::warn(format_args!(
                        "{} failed, trying the next host: {} (said once per host)",
                        skipped.host,
                        ocidist::content::Report::new(skipped.error)
                    ));
                }
            });
        if let Some(parallel) = self.ranges {
            resolver = resolver.ranged_fetch(RangedFetch {
                parallel,
                loopback: true,
                ..RangedFetch::default()
            });
        }
        if !self.tls.ca_files.is_empty() || self.tls.skip_verify {
            resolver = resolver
                .tls(&self.tls.ca_files, self.tls.skip_verify)
                .map_err(|e| Failure::new("TLS settings", e))?;
        }
        if let Some(cert) = &self.tls.cert {
            resolver = resolver
                .client_certificate(cert, self.tls.key.as_deref())
                .map_err(|e| Failure::new("TLS settings", e))?;
        }
        Ok(match &self.hosts_dir {
            Some(dir) => resolver.hosts_dir(dir),
            None => resolver,
        })
    }
}

pub(crate) async fn fetch_object_cmd(remote: &Remote, args: FetchObjectArgs) -> CmdResult {
    let what = format!("fetch-object {} {}", args.locator, args.object);
    let hints: Vec<&str> = args.hints.iter().map(String::as_str).collect();
    let (_, mut stream) = fetch_object(&remote.resolver()?, &args.locator, &args.object, &hints)
        .await
        .map_err(|e| Failure::new(what.clone(), e))?;
    let mut stdout = crate::output::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Failure::new(what.clone(), e))?;
        stdout
            .write_all(&chunk)
            .await
            .map_err(|e| Failure::new(what.clone(), e))?;
    }
    stdout.flush().await.map_err(|e| Failure::new(what, e))
}

pub(crate) async fn fetch(
    stores: &Stores,
    lease: Lease,
    remote: &Remote,
    args: FetchArgs,
) -> CmdResult {
    let what = format!("fetch {}", args.reference);
    let content = LeasedStore::new(stores.content.clone(), lease);
    let resolver = remote.resolver()?;
    let progress = Progress::start(Some(&stores.content));
    let matcher: Box<dyn Matcher> = if args.all_platforms {
        Box::new(platforms::all())
    } else {
        Box::new(platforms::only(&remote.platform))
    };
    let per_index = if args.all_platforms { 0 } else { 1 };
    let result = fetch_image(
        &resolver,
        &content,
        &stores.images,
        &args.reference,
        std::sync::Arc::<dyn Matcher>::from(matcher),
        per_index,
        Some(args.concurrency),
        Some(progress.fetch_events()),
    )
    .await;
    progress.finish(result.is_ok()).await;
    let image = result.map_err(|e| Failure::new(what, e))?;
    report!("{} {}", image.name, image.target.digest());
    Ok(())
}

pub(crate) async fn push(
    stores: &Stores,
    lease: Lease,
    remote: &Remote,
    args: PushArgs,
) -> CmdResult {
    let what = format!("push {}", args.reference);
    let local = args.local.clone().unwrap_or_else(|| args.reference.clone());
    let mut target = local_target(stores, &local)
        .await
        .map_err(|e| Failure::new(what.clone(), e))?;
    let is_index = ocidist::images::media_types::kind(target.media_type().as_ref())
        == ocidist::images::media_types::Kind::Index;
    // As `ctr push --platform`: an index's manifest for that platform goes
    // alone, under the tag. A one-platform fetch of an index can be pushed
    // no other way: the index lists manifests the store does not hold.
    if remote.platform_given && is_index {
        target = manifest::manifest(&stores.content, &target, &platforms::only(&remote.platform))
            .await
            .map_err(|e| match &e {
                // The index names that platform; the store lacks its manifest.
                ocidist::images::Error::Content(c) if c.is_not_found() => Failure::new(
                    what.clone(),
                    format!(
                        "{}: the store lacks the {} manifest of this index: fetch it \
                         with --platform {1}, or --all-platforms",
                        ocidist::content::Report::new(&e),
                        remote.platform
                    ),
                ),
                _ => Failure::new(what.clone(), e),
            })?
            .descriptor;
    }
    // What it reads stays through a prune in another process (an image
    // removed meanwhile, content past its grace period).
    lease
        .add_content(target.digest())
        .await
        .map_err(|e| Failure::new(what.clone(), e))?;
    // Blobs go from the store as they are: no copy, in /tmp or elsewhere.
    let resolver = remote.resolver()?;
    let progress = Progress::start(None);
    let result = push_image(
        &resolver,
        &stores.content,
        &args.reference,
        &target,
        args.concurrency,
        Some(progress.push_events()),
    )
    .await;
    progress.finish(result.is_ok()).await;
    result.map_err(|e| {
        if let ocidist::remotes::Error::MissingManifest {
            digest,
            platform,
            listed_by,
        } = &e
        {
            // What a one-platform fetch of an index leaves: the way out said
            // in this program's terms, instead of the library's.
            let platform = platform
                .as_ref()
                .map_or(String::new(), |p| format!(" (platform {p})"));
            return Failure::new(
                what.clone(),
                format!(
                    "the store lacks manifest {digest}{platform}, which index {listed_by} \
                     lists: a fetch without --all-platforms keeps one platform's manifest: \
                     push that platform alone with --platform, or fetch --all-platforms first"
                ),
            );
        }
        if let ocidist::remotes::Error::Content(c) = &e
            && c.is_not_found()
        {
            return Failure::new(
                what.clone(),
                format!(
                    "{} (`images check {local}` lists what the image lacks; fetch it again)",
                    ocidist::content::Report::new(&e)
                ),
            );
        }
        if let ocidist::remotes::Error::Content(ocidist::content::Error::DigestMismatch {
            expected,
            ..
        }) = &e
        {
            // Read from our own store, checked as it was sent: the copy here
            // went bad after its commit (the registry completed nothing).
            let hint = format!(
                "the store's copy of {expected} is corrupt: remove it \
                 (dist delete {expected}) and fetch the image again"
            );
            return Failure::new(
                what.clone(),
                format!("{}; {hint}", ocidist::content::Report::new(&e)),
            );
        }
        Failure::new(what.clone(), e)
    })?;
    report!("{} {}", args.reference, target.digest());
    Ok(())
}

/// The descriptor an image name (or a manifest digest) points at.
pub(crate) async fn local_target(
    stores: &Stores,
    local: &str,
) -> Result<ocidist::content::Descriptor, Box<dyn std::error::Error + Send + Sync>> {
    if let Ok(digest) = crate::content::parse_digest(local) {
        let info = stores.content.info(&digest).await?;
        let body = read_blob(
            &stores.content,
            &descriptor(digest.clone(), info.size),
            manifest::MAX_MANIFEST_SIZE,
        )
        .await?;
        let media_type = manifest::sniff_media_type(&body)
            .ok_or_else(|| format!("{digest} is not a manifest or index"))?;
        return Ok(ocidist::content::Descriptor::new(
            media_type.as_str().into(),
            info.size,
            digest,
        ));
    }
    Ok(find_image(stores, local).await?.target)
}

/// The image named `name` as given or normalised (`redis` is
/// `docker.io/library/redis:latest`).
pub(crate) async fn find_image(
    stores: &Stores,
    name: &str,
) -> Result<Image, Box<dyn std::error::Error + Send + Sync>> {
    match stores.images.get(name).await {
        Ok(image) => Ok(image),
        Err(e) if e.kind() == ocidist::content::ErrorKind::NotFound => {
            // Not a valid reference either: the store's "not found" says more.
            let Ok(normalised) = name.parse::<ocidist::remotes::Reference>() else {
                return Err(e.into());
            };
            Ok(stores.images.get(&normalised.to_string()).await?)
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn images(stores: &Stores, remote: &Remote, args: ImagesArgs) -> CmdResult {
    match args.command {
        None => list_images(stores, remote).await,
        Some(ImagesCommand::Check { names }) => check_images(stores, remote, names).await,
        Some(ImagesCommand::Rm { names }) => {
            crate::remove_each("images rm", &names, async |name| {
                let image = find_image(stores, name).await?;
                stores.images.delete(&image.name).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(image.name)
            })
            .await
        }
    }
}

async fn list_images(stores: &Stores, remote: &Remote) -> CmdResult {
    let images = stores
        .images
        .list(&[])
        .await
        .map_err(|e| Failure::new("images", e))?;
    if output::quiet() {
        // The names alone, for `xargs`, as `ctr images ls -q` prints them.
        for image in images {
            output::outln!("{}", image.name);
        }
        return Ok(());
    }
    let matcher = platforms::only(&remote.platform);
    let mut rows = Vec::new();
    for image in images {
        let target = &image.target;
        let kind = match media_types::kind(target.media_type().as_ref()) {
            media_types::Kind::Index => "index",
            media_types::Kind::Manifest => "manifest",
            _ => "other",
        };
        let total = size(&stores.content, target, &matcher)
            .await
            .map_or_else(|_| "-".to_string(), output::size);
        rows.push(vec![
            image.name.clone(),
            kind.to_string(),
            target.digest().to_string(),
            total,
            image_platforms(stores, &image).await.join(","),
        ]);
    }
    output::out!(
        "{}",
        output::table(&["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS"], &rows)
    );
    Ok(())
}

/// The platforms an image offers, as `os/arch[/variant]`.
async fn image_platforms(stores: &Stores, image: &Image) -> Vec<String> {
    manifest::platforms(&stores.content, &image.target)
        .await
        .map(|list| list.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

async fn check_images(stores: &Stores, remote: &Remote, names: Vec<String>) -> CmdResult {
    let mut incomplete = 0;
    let images = if names.is_empty() {
        stores
            .images
            .list(&[])
            .await
            .map_err(|e| Failure::new("images check", e))?
    } else {
        let mut found = Vec::new();
        for name in &names {
            match find_image(stores, name).await {
                Ok(image) => found.push(image),
                // A name that is not there is not a complete image.
                Err(e) => {
                    output::outln!("{name}: {}", ocidist::content::Report::new(&*e));
                    incomplete += 1;
                }
            }
        }
        found
    };
    let matcher = platforms::only(&remote.platform);
    for image in images {
        let report = match check(&stores.content, &image.target, &matcher).await {
            Ok(report) => report,
            // A document that cannot be read for want of another: said,
            // and the check goes on to the next image.
            Err(e) if e.kind() == ocidist::content::ErrorKind::NotFound => {
                output::outln!(
                    "{}: incomplete, {}",
                    image.name,
                    ocidist::content::Report::new(&e)
                );
                incomplete += 1;
                continue;
            }
            Err(e) => return Err(Failure::new(format!("images check {}", image.name), e)),
        };
        if report.complete() {
            output::outln!("{}: complete ({} blobs)", image.name, report.required.len());
        } else {
            incomplete += 1;
            let digests = |descs: &[ocidist::content::Descriptor]| {
                descs
                    .iter()
                    .map(|d| d.digest().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let mut said = Vec::new();
            if let Some(platform) = &report.no_manifest_for {
                said.push(format!("the index lists no manifest for {platform}"));
            }
            if !report.missing.is_empty() {
                said.push(format!("missing {}", digests(&report.missing)));
            }
            if !report.damaged.is_empty() {
                said.push(format!(
                    "damaged {} (the store's copy is not the size the manifest gives: \
                     remove it with `dist delete` and fetch the image again)",
                    digests(&report.damaged)
                ));
            }
            output::outln!("{}: incomplete, {}", image.name, said.join("; "));
        }
    }
    match incomplete {
        0 => Ok(()),
        n => Err(Failure::new(
            "images check",
            format!("{n} image(s) incomplete or missing"),
        )),
    }
}

pub(crate) async fn prune(
    stores: &Stores,
    leases: &Leases,
    snapshotters: &[(&str, Arc<dyn Snapshotter>)],
    args: PruneArgs,
) -> CmdResult {
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    // Held from before the images are read until the last removal: what a
    // pull running meanwhile relies on is kept, however young or old.
    // hold() waits for the lock: off the async workers.
    let dry_run = args.dry_run;
    let holding = tokio::task::spawn_blocking({
        let leases = leases.clone();
        move || {
            if dry_run {
                leases.hold_keeping_expired()
            } else {
                leases.hold()
            }
        }
    });
    // Another prune holds them while it decides and removes.
    let held = output::saying_if_slow(holding, || {
        format!(
            "waiting for another prune (it holds {})",
            leases.path().join(".lock").display()
        )
    })
    .await
    .map_err(|e| Failure::new("prune: leases", e))?
    .map_err(|e| Failure::new("prune: leases", e))?;
    if held.expired() > 0 {
        report!("{verb} {} expired leases", held.expired());
    }
    // Snapshots first, then the blobs, which a failed snapshot prune does
    // not keep from going (see `ocidist::gc`).
    let options = CollectOptions::new()
        .dry_run(args.dry_run)
        .grace(args.grace)
        .ingest_max_age(Some(args.ingest_max_age));
    let named: Vec<(&str, &dyn Snapshotter)> = snapshotters
        .iter()
        .map(|(name, snapshotter)| (*name, snapshotter.as_ref()))
        .collect();
    let collected = collect(&stores.content, &stores.images, &held, &named, &options).await;
    drop(held);
    for (name, pruned) in &collected.snapshots {
        for info in &pruned.removed {
            report!("{verb} {name} snapshot {}", info.name);
        }
        report!(
            "{verb} {} {name} snapshots; {} kept",
            pruned.removed.len(),
            pruned.kept
        );
        let cleanup = &pruned.cleanup;
        for key in &cleanup.records {
            report!("{verb} {name} record {key} (its directory was gone)");
        }
        for (path, size) in &cleanup.dirs {
            report!(
                "{verb} {name} leftover {} ({})",
                path.display(),
                output::size(*size)
            );
        }
        for (path, why) in &cleanup.failed {
            report!("could not remove {name} leftover {}: {why}", path.display());
        }
    }
    let snapshots_pruned = match collected.snapshots_failed {
        None => Ok(()),
        Some(failed) => Err(Failure::new("prune", failed)),
    };
    let report = collected.content.map_err(|e| Failure::new("prune", e))?;
    for (digest, size) in &report.blobs {
        report!("{verb} {digest} {}", output::size(*size));
    }
    for reference in &report.ingests {
        report!("{verb} ingest {reference}");
    }
    let young = match report.young {
        0 => String::new(),
        n => format!(
            ", {n} more kept only until they are older than --grace ({})",
            output::span(args.grace)
        ),
    };
    report!(
        "{verb} {} blobs ({}) and {} ingests; {} blobs in use{young}",
        report.blobs.len(),
        output::size(report.bytes()),
        report.ingests.len(),
        report.reachable - report.young
    );
    snapshots_pruned
}
