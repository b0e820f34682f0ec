//! The overlay snapshotter: each snapshot keeps only its own changes in
//! `<root>/snapshots/<id>/fs` (with `work/` for overlayfs), and a mount stacks
//! it on its parents' `fs` directories. Whiteouts are stored the overlay way:
//! a 0/0 character device for a deleted name, the `overlay.opaque` xattr for
//! a directory that hides its lower layers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::base::{Base, one_request};
use crate::{
    Cleanup, CommitOpts, CommitRequest, Durability, Error, Info, Kind, Labels, Mount, OpenOptions,
    PrepareRequest, Result, Snapshotter, Usage,
};

/// Snapshots as overlayfs layers under `<root>/snapshots/<id>/fs`.
#[derive(Clone)]
pub struct OverlaySnapshotter {
    base: Arc<Base>,
    options: Arc<Vec<String>>,
}

impl std::fmt::Debug for OverlaySnapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlaySnapshotter")
            .field("root", &self.base.root)
            .finish_non_exhaustive()
    }
}

/// Whether this process must use the `user.overlay.*` xattrs (an
/// unprivileged mount, or root in a user namespace, which may not set
/// `trusted.*`: containerd's `NeedsUserXAttr`) rather than `trusted.overlay.*`.
pub fn needs_userxattr() -> bool {
    !rustix::process::geteuid().is_root() || crate::mount::running_in_user_namespace()
}

/// The xattr that marks an opaque directory for our overlay mounts.
pub fn opaque_xattr() -> &'static str {
    if needs_userxattr() {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    }
}

/// Whether overlayfs can be mounted here: the kernel knows it and we are root.
pub fn supported() -> bool {
    let known = std::fs::read_to_string("/proc/filesystems")
        .map(|f| f.lines().any(|l| l.trim_end().ends_with("\toverlay")))
        .unwrap_or(false);
    known && rustix::process::geteuid().is_root()
}

/// Refuses a root whose snapshots' paths overlay mount options cannot
/// carry as they are: `:` separates lower directories there, `,` options,
/// and `\` escapes; and the options are text. Such a root would unpack
/// and then fail at every mount, saying only ENOENT. containerd's overlay
/// snapshotter does not escape them either (it fails its mount check at
/// start there).
fn check_root_fits_options(root: &Path) -> Result<()> {
    let refused = match root.to_str() {
        None => "is not UTF-8, and overlay mount options name directories as text".to_string(),
        Some(text) => match text.chars().find(|c| matches!(c, ':' | ',' | '\\')) {
            None => return Ok(()),
            Some(c) => format!("holds {c:?}, which overlay mount options give a meaning"),
        },
    };
    Err(Error::InvalidArgument(format!(
        "overlay snapshotter root {}: its path {refused}; choose another root (or the native \
         snapshotter)",
        root.display()
    )))
}

impl OverlaySnapshotter {
    /// Opens (creating if needed) an overlay snapshotter rooted at `root`,
    /// with [`Durability::Synced`] commits. `root` is the snapshotter's own:
    /// it and its `snapshots/` are made private to their owner (0700), and
    /// what a crash left there is removed. A root whose path (symlinks
    /// resolved) holds `:`, `,` or `\`, or is not UTF-8, is refused
    /// ([`Error::InvalidArgument`]): overlay mount options could not name
    /// its directories.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(root, Durability::Synced)
    }

    /// Opens (creating if needed) an overlay snapshotter rooted at `root`
    /// whose commits are as durable as `durability` says.
    pub fn open_with(root: impl AsRef<Path>, durability: Durability) -> Result<Self> {
        Self::open_with_options(root, durability.into())
    }

    /// Opens (creating if needed) a snapshotter rooted at `root` as
    /// `options` say.
    pub fn open_with_options(root: impl AsRef<Path>, options: OpenOptions) -> Result<Self> {
        let base = Base::open(root.as_ref(), options)?;
        // The path the mounts will name, symlinks resolved.
        check_root_fits_options(&base.root)?;
        let mut mount_options = Vec::new();
        // Without index=off, a layer mounted by two overlays at once (two
        // containers of one image) fails on kernels that default it on.
        if Path::new("/sys/module/overlay/parameters/index").exists() {
            mount_options.push("index=off".to_string());
        }
        if needs_userxattr() {
            mount_options.push("userxattr".to_string());
        }
        Ok(OverlaySnapshotter {
            base,
            options: Arc::new(mount_options),
        })
    }

    fn upper(base: &Base, id: u64) -> PathBuf {
        base.dir(id).join("fs")
    }

    fn mounts_of(
        base: &Base,
        options: &[String],
        kind: Kind,
        id: u64,
        parents: &[u64],
    ) -> Vec<Mount> {
        let lowerdir = |ids: &mut dyn Iterator<Item = u64>| {
            let dirs: Vec<String> = ids
                .map(|id| Self::upper(base, id).to_string_lossy().into_owned())
                .collect();
            format!("lowerdir={}", dirs.join(":"))
        };
        match kind {
            Kind::Active if parents.is_empty() => vec![Mount::bind(Self::upper(base, id), false)],
            Kind::Active => {
                let mut opts = options.to_vec();
                opts.push(format!("workdir={}", base.dir(id).join("work").display()));
                opts.push(format!("upperdir={}", Self::upper(base, id).display()));
                opts.push(lowerdir(&mut parents.iter().copied()));
                vec![Mount {
                    kind: "overlay".into(),
                    source: "overlay".into(),
                    options: opts,
                }]
            }
            Kind::View if parents.is_empty() => vec![Mount::bind(Self::upper(base, id), true)],
            Kind::View if parents.len() == 1 => {
                vec![Mount::bind(Self::upper(base, parents[0]), true)]
            }
            Kind::View => vec![Self::readonly_overlay(
                options,
                lowerdir(&mut parents.iter().copied()),
            )],
            Kind::Committed if parents.is_empty() => vec![Mount::bind(Self::upper(base, id), true)],
            Kind::Committed => {
                let mut ids = std::iter::once(id).chain(parents.iter().copied());
                vec![Self::readonly_overlay(options, lowerdir(&mut ids))]
            }
        }
    }

    fn readonly_overlay(options: &[String], lowerdir: String) -> Mount {
        let mut opts = vec!["ro".to_string()];
        opts.extend(options.iter().cloned());
        opts.push(lowerdir);
        Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: opts,
        }
    }

    /// Fills a staging directory: empty `fs/` (0755, or owned and moded as
    /// the parent's root is: the upper directory is the root a mount shows;
    /// containerd passes on the owner only) and `work/`.
    fn fill(base: &Base, request: &PrepareRequest, staging: &Path) -> Result<()> {
        for sub in ["fs", "work"] {
            let dir = staging.join(sub);
            std::fs::create_dir(&dir).map_err(|e| Error::io("mkdir", dir, e))?;
        }
        // The root of a layer is 0755 unless the layer says otherwise.
        let fs = staging.join("fs");
        std::fs::set_permissions(&fs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| Error::io("chmod", &fs, e))?;
        if let Some(parent) = &request.parent {
            use std::os::unix::fs::MetadataExt;
            let ids = base.meta.committed_parent(parent)?;
            let parent_fs = Self::upper(base, ids[0]);
            let owner =
                std::fs::metadata(&parent_fs).map_err(|e| Error::io("stat", &parent_fs, e))?;
            let made = std::fs::metadata(&fs).map_err(|e| Error::io("stat", &fs, e))?;
            if (owner.uid(), owner.gid()) != (made.uid(), made.gid()) {
                std::os::unix::fs::lchown(&fs, Some(owner.uid()), Some(owner.gid()))
                    .map_err(|e| Error::io("chown", &fs, e))?;
            }
            // After the chown, which clears set-id bits. Without root, the
            // owner keeps the write access a container's writes need.
            let mut mode = owner.mode() & 0o7777;
            if !rustix::process::geteuid().is_root() {
                mode |= 0o700;
            }
            if mode != made.mode() & 0o7777 {
                std::fs::set_permissions(&fs, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .map_err(|e| Error::io("chmod", &fs, e))?;
            }
        }
        Ok(())
    }

    async fn create_all(
        &self,
        requests: Vec<PrepareRequest>,
        kind: Kind,
    ) -> Result<Vec<Vec<Mount>>> {
        let options = self.options.clone();
        self.base
            .run(move |base| {
                let created = base.stage_and_create_all(requests, kind, Self::fill)?;
                Ok(created
                    .into_iter()
                    .map(|(record, parents)| {
                        Self::mounts_of(base, &options, kind, record.id, &parents)
                    })
                    .collect())
            })
            .await
    }
}

#[async_trait]
impl Snapshotter for OverlaySnapshotter {
    async fn stat(&self, key: &str) -> Result<Info> {
        self.base.stat(key).await
    }

    async fn update(&self, info: Info, fieldpaths: &[&str]) -> Result<Info> {
        self.base.update(info, fieldpaths).await
    }

    async fn usage(&self, key: &str) -> Result<Usage> {
        self.base.usage(key, "fs").await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let options = self.options.clone();
        let key = key.to_string();
        self.base
            .run(move |base| {
                let (record, parents) = base.meta.get(&key)?;
                Ok(Self::mounts_of(
                    base,
                    &options,
                    record.kind,
                    record.id,
                    &parents,
                ))
            })
            .await
    }

    async fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        let mut mounts = self
            .create_all(one_request(key, parent, labels), Kind::Active)
            .await?;
        Ok(mounts.remove(0))
    }

    async fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        let mut mounts = self
            .create_all(one_request(key, parent, labels), Kind::View)
            .await?;
        Ok(mounts.remove(0))
    }

    async fn commit_with(&self, name: &str, key: &str, opts: CommitOpts) -> Result<()> {
        self.commit_all(vec![CommitRequest {
            name: name.to_string(),
            key: key.to_string(),
            opts,
        }])
        .await
    }

    async fn prepare_all(&self, requests: Vec<PrepareRequest>) -> Result<Vec<Vec<Mount>>> {
        self.create_all(requests, Kind::Active).await
    }

    async fn commit_all(&self, requests: Vec<CommitRequest>) -> Result<()> {
        self.base
            .run(move |base| base.commit_all(requests, "fs"))
            .await
    }

    async fn remove(&self, key: &str) -> Result<()> {
        self.base.remove(key).await
    }

    async fn walk(&self, filters: &[&str]) -> Result<Vec<Info>> {
        self.base.walk(filters).await
    }

    async fn close(&self) -> Result<()> {
        self.base.close();
        Ok(())
    }

    async fn cleanup(&self, dry_run: bool) -> Result<Cleanup> {
        self.base.cleanup(dry_run).await
    }

    fn can_rebase(&self) -> bool {
        true
    }
}
