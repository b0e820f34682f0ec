//! Commands that make filesystems: pull (fetch + unpack), apply, rootfs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use ocidist::content::Provider;
use ocidist::content::lease::{Lease, LeasedStore};
use ocidist::images::platforms::{self, Matcher};
use ocidist::pull::{PullOptions, pull};
use ocidist::snapshot::apply::{ApplyOptions, apply_layer};
use ocidist::snapshot::lease::LeasedSnapshotter;
use ocidist::snapshot::mount::{self, ApplyTarget};
use ocidist::snapshot::{Labels, Snapshotter, copy_tree, unpack};

use crate::image::{Remote, local_target};
use crate::output::report;
use crate::progress::Progress;
use crate::{CmdResult, Failure, Stores};

#[derive(Debug, Args)]
pub(crate) struct PullArgs {
    /// The image: `[host[:port]/]path[:tag][@digest]`.
    reference: String,
    /// Blobs fetched at once.
    #[arg(long, default_value_t = 8, value_parser = crate::parse_count)]
    concurrency: usize,
    /// Fetch every platform of an index; only `--platform`'s is unpacked.
    #[arg(long)]
    all_platforms: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// The directory to apply the layer (read from stdin) to.
    dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct RootfsArgs {
    /// The image (a name in the image store, a manifest digest, or the chain
    /// ID `unpack` printed); not with --unmount.
    #[arg(required_unless_present = "unmount", conflicts_with = "unmount")]
    reference: Option<String>,
    /// Where the filesystem goes. Made if missing; the parents made for it
    /// are mode 0700. An image's setuid files and devices are reachable
    /// through DEST (whose own mode becomes the image root's), so it
    /// belongs in a directory only you can enter, as containerd keeps its
    /// rootfs mounts.
    #[arg(required_unless_present = "unmount", conflicts_with = "unmount")]
    dest: Option<PathBuf>,
    /// Make DEST a plain copy of the filesystem instead of a mounted snapshot.
    #[arg(long, conflicts_with = "unmount")]
    pub(crate) copy: bool,
    /// Unmount the rootfs at this directory and remove its snapshot.
    #[arg(long, value_name = "DEST")]
    pub(crate) unmount: Option<PathBuf>,
}

pub(crate) async fn pull_cmd(
    stores: &Stores,
    lease: Lease,
    remote: &Remote,
    snapshotter: &Arc<dyn Snapshotter>,
    args: PullArgs,
) -> CmdResult {
    let what = format!("pull {}", args.reference);
    let resolver = remote.resolver()?;
    let progress = Progress::start(Some(&stores.content));
    let matcher: Arc<dyn Matcher> = Arc::new(platforms::only(&remote.platform));
    let options = PullOptions::new(matcher)
        .all_platforms(args.all_platforms)
        .limit(args.concurrency)
        .unpack(remote.unpack_options())
        .events(progress.events())
        .lease(lease);
    let result = pull(
        &resolver,
        &stores.content,
        &stores.images,
        snapshotter,
        &args.reference,
        options,
    )
    .await;
    progress.finish(result.is_ok()).await;
    let pulled = result.map_err(|e| match &e {
        ocidist::pull::PullError::Corrupt {
            corrupt: ocidist::content::Error::BlobCorrupt { digest, .. },
            ..
        } => Failure::new(
            what,
            format!(
                "{}: remove it (dist delete {digest}) and pull again",
                ocidist::content::Report::new(&e)
            ),
        ),
        _ => Failure::new(what, e),
    })?;
    report!("{} {}", pulled.image.name, pulled.image.target.digest());
    match &pulled.chain_id {
        Some(chain_id) => report!("unpacked: {chain_id}"),
        None => report!("unpacked: no layers (an empty root filesystem)"),
    }
    Ok(())
}

pub(crate) async fn apply_cmd(args: ApplyArgs) -> CmdResult {
    let what = format!("apply {}", args.dir.display());
    std::fs::create_dir_all(&args.dir).map_err(|e| Failure::new(what.clone(), e))?;
    let applied = apply_layer(
        &ApplyTarget::Tree(args.dir.clone()),
        tokio::io::stdin(),
        None,
        ApplyOptions::default(),
    )
    .await
    .map_err(|e| Failure::new(what, e))?;
    // Warnings are not errors: --quiet leaves them out.
    if !crate::output::quiet() {
        for warning in &applied.warnings {
            eprintln!("dist: apply: {warning}");
        }
    }
    crate::output::outln!("{}", applied.diff_id);
    Ok(())
}

/// The mounts of the rootfs snapshot `key` that DEST already has, to mount
/// again: one a `rootfs` killed before it mounted left, or one unmounted by
/// hand or by a reboot, whose writes are kept. `None` when it is mounted
/// there already (a `rootfs` killed after it mounted: what was asked is
/// done). Refused when it is of another image than `chain`, or covered by
/// another filesystem mounted over it.
async fn existing_rootfs(
    snapshotter: &dyn Snapshotter,
    key: &str,
    chain: Option<&str>,
    dest: &Path,
) -> Result<Option<Vec<mount::Mount>>, Box<dyn std::error::Error + Send + Sync>> {
    let info = snapshotter.stat(key).await?;
    let mounts = snapshotter.mounts(key).await?;
    let Some(first) = mounts.first() else {
        return Err(format!("rootfs snapshot {key} has no mounts").into());
    };
    let at = mount::mounted_at(dest, first)?;
    if info.parent.as_deref() != chain {
        let mounted = if at == mount::MountedAt::Absent {
            "not mounted"
        } else {
            "mounted"
        };
        return Err(format!(
            "DEST has the rootfs of another image, {mounted}: `dist rootfs --unmount DEST` \
             removes it (and what was written into it)"
        )
        .into());
    }
    match at {
        mount::MountedAt::Absent => Ok(Some(mounts)),
        mount::MountedAt::Top => Ok(None),
        mount::MountedAt::Covered => {
            Err("the rootfs is mounted there, under another filesystem mounted over it".into())
        }
    }
}

/// `reference` itself, when it is the key of a committed snapshot (what
/// `unpack` prints): no image needs to be named for it.
async fn committed_snapshot(snapshotter: &dyn Snapshotter, reference: &str) -> Option<String> {
    crate::content::parse_digest(reference).ok()?;
    let info = snapshotter.stat(reference).await.ok()?;
    (info.kind == ocidist::snapshot::Kind::Committed).then(|| reference.to_string())
}

/// The snapshot key of the rootfs mounted at `dest`.
pub(crate) fn rootfs_key(dest: &std::path::Path) -> String {
    // A DEST that is gone (a reboot took it) names the same key through its
    // parent, or at least as an absolute path.
    let dest = std::fs::canonicalize(dest)
        .or_else(|e| match (dest.parent(), dest.file_name()) {
            (Some(parent), Some(name)) => {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                std::fs::canonicalize(parent).map(|p| p.join(name))
            }
            _ => Err(e),
        })
        .or_else(|_| std::path::absolute(dest))
        .unwrap_or_else(|_| dest.to_path_buf());
    format!("rootfs:{}", dest.display())
}

/// Mounts or copies an image's filesystem. `lease` keeps what it unpacks
/// through a prune in another process; `None` (a `--copy` from a store that
/// cannot be written) reads the store as it is, so only an image unpacked
/// there already can be copied out.
/// The directory `path` is in (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Set when dropped: the command a blocking copy works for was dropped (a
/// signal, `--timeout`), so what it made must not appear.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Makes `dest` (which does not exist) by `copy`, whole or not at all: into
/// a staging directory beside it, renamed to `dest` when complete, unless
/// `dropped` says by then that the command was interrupted (it exits
/// saying so, and a retry must find no `dest`). A killed copy leaves a
/// staging directory and no `dest`; the next copy to `dest` removes it
/// (each holds its directory's flock while it copies, so a live one is left
/// alone).
fn copy_into_place(
    dest: &Path,
    dropped: &AtomicBool,
    copy: impl FnOnce(&Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let parent = parent_of(dest);
    let name = dest
        .file_name()
        .ok_or("DEST names no directory of its own")?
        .to_string_lossy();
    let prefix = format!(".{name}.ocidist-partial-");
    let making_prefix = format!(".{name}.ocidist-making-");
    ocidist::staging::sweep_unheld(parent, &prefix, std::time::Duration::ZERO);
    ocidist::staging::sweep_unheld(parent, &making_prefix, ocidist::staging::GRACE);
    // Mode 0700, as DEST's parents made here: until the copy sets it, the
    // root's mode is not the image's.
    let staging = ocidist::staging::locked_dir(parent, &prefix, &making_prefix)?;
    copy(staging.path())?;
    if dropped.load(Ordering::SeqCst) {
        // Removed as `staging` drops.
        return Err("interrupted: the finished copy is discarded".into());
    }
    let (staged, _lock) = staging.kept();
    if let Err(e) = std::fs::rename(&staged, dest) {
        let _ = std::fs::remove_dir_all(&staged);
        // Made and filled meanwhile (another copy to the same DEST, that
        // finished first): what is there stays, this copy goes.
        if e.raw_os_error() == Some(libc::ENOTEMPTY) || e.raw_os_error() == Some(libc::EEXIST) {
            return Err(
                "DEST was made and filled by another while this copy ran; it is left as \
                 it is, and this copy dropped"
                    .into(),
            );
        }
        return Err(format!("rename the finished copy to {}: {e}", dest.display()).into());
    }
    std::fs::File::open(parent)?.sync_all()?;
    Ok(())
}

pub(crate) async fn rootfs_cmd(
    stores: &Stores,
    lease: Option<Lease>,
    remote: &Remote,
    snapshotter: &Arc<dyn Snapshotter>,
    args: RootfsArgs,
) -> CmdResult {
    let leased;
    let (content, snapshotter): (&dyn Provider, &dyn Snapshotter) = match &lease {
        Some(lease) => {
            leased = (
                LeasedStore::new(stores.content.clone(), lease.clone()),
                LeasedSnapshotter::new(snapshotter.clone(), lease.clone()),
            );
            (&leased.0, &leased.1)
        }
        None => (&stores.content, &**snapshotter),
    };
    if let Some(dest) = &args.unmount {
        let what = format!("rootfs --unmount {}", dest.display());
        let key = rootfs_key(dest);
        // Ours, or nothing is touched: a mistyped path must not take down a
        // filesystem this store never mounted.
        let mounts = match snapshotter.mounts(&key).await {
            Ok(mounts) => mounts,
            // Nothing of ours, and nothing at all mounted there: what was
            // asked holds already (a `--unmount` killed after it was done,
            // run again). Something mounted there is another's: refused.
            Err(e) if e.is_not_found() => {
                let mounted = mount::is_mount_point(dest).map_err(|e| Failure::new(&what, e))?;
                if !mounted {
                    eprintln!(
                        "dist: {what}: nothing to unmount: no rootfs of this store is there, \
                         and nothing is mounted there"
                    );
                    return Ok(());
                }
                return Err(Failure::new(
                    what,
                    format!(
                        "no rootfs of this store is mounted there (another --root or --snapshotter?): {}",
                        ocidist::content::Report::new(&e)
                    ),
                ));
            }
            Err(e) => return Err(Failure::new(what, e)),
        };
        // Only what `rootfs` mounted there, and only if it is still on top:
        // unmounted already (by hand, a reboot, a crash before the mount),
        // or DEST gone, the snapshot must still go, or nothing would ever
        // remove it, while a filesystem mounted at DEST (before, or since)
        // stays.
        let unmounting = dest.clone();
        let unmounted = tokio::task::spawn_blocking(move || {
            let at = match mounts.last() {
                Some(top) => match mount::mounted_at(&unmounting, top) {
                    Ok(at) => at,
                    Err(ocidist::snapshot::Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        mount::MountedAt::Absent
                    }
                    Err(e) => return Err(ocidist::content::Report::new(&e).to_string()),
                },
                None => mount::MountedAt::Absent,
            };
            match at {
                mount::MountedAt::Top => mount::unmount_unless_busy(&unmounting, mounts.len())
                    .map_err(|e| ocidist::content::Report::new(&e).to_string()),
                // Its files must stay while it is mounted, even out of sight.
                mount::MountedAt::Covered => Err(format!(
                    "another filesystem is mounted over the rootfs at {}: unmount it first",
                    unmounting.display()
                )),
                mount::MountedAt::Absent => Ok(()),
            }
        })
        .await
        .map_err(|e| Failure::new(what.clone(), e))?;
        // In use (EBUSY): mounted it stays, and so does its snapshot.
        unmounted.map_err(|e| Failure::new(what.clone(), e))?;
        snapshotter
            .remove(&key)
            .await
            .map_err(|e| Failure::new(what, e))?;
        return Ok(());
    }
    let (Some(reference), Some(dest)) = (args.reference, args.dest) else {
        return Err(Failure::new("rootfs", "REF and DEST are required"));
    };
    let what = format!("rootfs {reference} {}", dest.display());
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| Failure::new(what.clone(), e);
    // Said before the unpack, not after it: a copy never merges into what
    // is there.
    if args.copy && std::fs::read_dir(&dest).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(fail(
            "DEST is not empty (a copy goes into a new or empty directory; one killed \
             midway into a directory that was there leaves it part-filled: empty it)"
                .into(),
        ));
    }
    let chain = match local_target(stores, &reference).await {
        Ok(target) => {
            let matcher = platforms::only(&remote.platform);
            let unpacked = unpack(
                &target,
                content,
                snapshotter,
                &matcher,
                remote.unpack_options(),
            );
            match unpacked.await {
                Ok(chain_id) => chain_id.map(|chain_id| chain_id.to_string()),
                Err(e) => {
                    // A stored layer gone bad since its commit fails as
                    // bytes that do not decode: the store's copy named,
                    // with the way out.
                    let corrupt =
                        ocidist::pull::corrupt_layer(&stores.content, &target, &matcher, &e);
                    if let Some(ocidist::content::Error::BlobCorrupt { digest, found }) =
                        corrupt.await
                    {
                        return Err(fail(
                            format!(
                                "the store's copy of {digest} is corrupt ({found}): remove it \
                                 (dist delete {digest}) and fetch the image again; the unpack \
                                 failed on it: {}",
                                ocidist::content::Report::new(&e)
                            )
                            .into(),
                        ));
                    }
                    return Err(match lease {
                        // What a one-platform fetch of an index leaves, or
                        // content removed since: where to look said in this
                        // program's terms.
                        Some(_) if e.kind() == ocidist::snapshot::ErrorKind::NotFound => fail(
                            format!(
                                "{} (`images check {reference}` lists what the store lacks; a \
                                 fetch or pull of an index keeps only the --platform's manifest, \
                                 {}, unless --all-platforms)",
                                ocidist::content::Report::new(&e),
                                remote.platform
                            )
                            .into(),
                        ),
                        Some(_) => fail(e.into()),
                        None => fail(
                            format!(
                                "{} (the store cannot be written here: only an image unpacked \
                                 in it already can be copied out)",
                                ocidist::content::Report::new(&e)
                            )
                            .into(),
                        ),
                    });
                }
            }
        }
        // The chain ID `unpack` printed: its committed snapshot, as it is.
        Err(e) => match committed_snapshot(snapshotter, &reference).await {
            Some(chain) => Some(chain),
            None => return Err(fail(e)),
        },
    };
    // The parents made for it private, as containerd's are: an image's
    // setuid binaries and device nodes are no one else's to reach
    // (CVE-2021-41091). DEST's own mode becomes the image root's (copied, or
    // shown by the mount); parents the caller made are left as they are.
    let private_dirs = || {
        let mut builder = std::fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(builder.recursive(true), 0o700);
        builder
    };
    // A copy to a new DEST is staged beside it: see `copy_into_place`.
    let dest_existed = dest.exists();
    let staged = args.copy && !dest_existed;
    let made = if staged { parent_of(&dest) } else { &dest };
    private_dirs().create(made).map_err(|e| fail(e.into()))?;
    if args.copy {
        // An image with no layers copies out as an empty tree.
        let mounts = match &chain {
            Some(chain) => snapshotter
                .mounts(chain)
                .await
                .map_err(|e| fail(e.into()))?,
            None => Vec::new(),
        };
        // Off the runtime, so a Ctrl-C is seen while it copies. A mount to
        // read through is made where only the copy sees it, and goes with
        // the copy, even with a killed process.
        let into = dest.clone();
        let dropped = Arc::new(AtomicBool::new(false));
        let _tell_the_copy = SetOnDrop(dropped.clone());
        tokio::task::spawn_blocking(move || {
            let copy = |to: &Path| match &mounts[..] {
                // The mode containerd gives a snapshot made with no parent.
                [] => std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| ocidist::snapshot::Error::io("chmod", to, e)),
                [m] if m.kind == "bind" => copy_tree(&m.source, to),
                _ => mount::with_temp_mount(&mounts, |root| copy_tree(root, to))?,
            };
            if staged {
                copy_into_place(&into, &dropped, |to| copy(to).map_err(Into::into))
            } else {
                copy(&into).map_err(Into::into)
            }
        })
        .await
        .map_err(|e| fail(e.into()))?
        .map_err(fail)?;
    } else {
        let key = rootfs_key(&dest);
        let (mounts, made) = match snapshotter
            .prepare(&key, chain.as_deref(), Labels::new())
            .await
        {
            Ok(mounts) => (mounts, true),
            Err(e) if e.is_already_exists() => {
                match existing_rootfs(snapshotter, &key, chain.as_deref(), &dest)
                    .await
                    .map_err(fail)?
                {
                    Some(mounts) => (mounts, false),
                    None => {
                        eprintln!("dist: {what}: mounted there already");
                        report!("{}", dest.display());
                        return Ok(());
                    }
                }
            }
            Err(e) => return Err(fail(e.into())),
        };
        if let Err(e) = mount::mount_all(&mounts, &dest) {
            // One made before (with what was written into it) stays; and
            // so does DEST, unless this run made it (it is empty then).
            if made {
                let _ = snapshotter.remove(&key).await;
            }
            if !dest_existed {
                let _ = std::fs::remove_dir(&dest);
            }
            return Err(fail(e.into()));
        }
    }
    report!("{}", dest.display());
    Ok(())
}
