//! `dist`: containerd's original distribution tool, on ocidist's public API.
//!
//! Commands on the content store (`ingest`, `active`, `list`, `path`, `get`,
//! `delete`), on registries (`fetch-object`, `fetch`, `push`, `pull`), on
//! images (`images`, `prune`), on snapshots (`apply`, `rootfs`) and on OCI
//! layouts (`export`, `import`, `unpack`) compose in shell pipelines, as the
//! original's did:
//!
//! ```text
//! dist ingest my-ref --expected-digest sha256:… --expected-size 1234 < blob
//! dist list -q | xargs dist delete
//! ```
//!
//! Errors print one line, `dist: <what>: <cause>`, and exit 1; usage errors exit 2.
//! Ctrl-C or SIGTERM stops at once (dist ends by the signal, as a shell
//! expects: `$?` is 130 or 143) and leaves the ingests in the store, so the
//! next run resumes them.

mod content;
mod image;
mod layout;
mod output;
mod progress;
mod rootfs;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ocidist::content::lease::Leases;
use ocidist::content::local::LocalStore;
use ocidist::images::{DbImageStore, Platform};

/// containerd's distribution primitives: ingest, inspect and manage content.
#[derive(Debug, Parser)]
#[command(name = "dist", version, next_help_heading = "Global options")]
struct Cli {
    /// Store root. Default: $OCIDIST_ROOT, else /var/lib/ocidist as root, else
    /// $XDG_DATA_HOME/ocidist (~/.local/share/ocidist); empty or relative
    /// XDG_DATA_HOME and HOME are ignored.
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Print debugging details on errors.
    #[arg(long, global = true)]
    debug: bool,
    /// Print nothing but errors and a command's answer (`get`, `path`,
    /// `fetch-object`, `active`, `images` and `images check`, `apply`'s diff
    /// ID, `unpack`'s chain ID); `list -q` prints digests only, `active -q`
    /// refs only, `images -q` names only.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Give up after this long (e.g. 30s, 5m, 1h).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// Speak plain HTTP to registries. One given TLS settings (TLS flags, or
    /// certificates or `skip_verify` in --hosts-dir) on a port other than 80
    /// still gets HTTPS if it speaks that, as with containerd. Without it, a
    /// loopback registry gets HTTPS with its certificate unchecked, or plain
    /// HTTP on port 80 or on another port where it speaks that, as with
    /// containerd; TLS flags make it HTTPS as they say, and certificates in
    /// --hosts-dir HTTPS if it speaks that.
    #[arg(long, global = true)]
    plain_http: bool,
    /// Registry credentials, USER:PASSWORD, for every registry the command
    /// talks to, instead of Docker's config.json (ctr's --user; dist does
    /// not prompt for a missing password).
    #[arg(long, short = 'u', global = true, value_name = "USER:PASSWORD", value_parser = parse_user)]
    user: Option<(String, String)>,
    /// containerd-style registry hosts configuration: DIR/<registry>/hosts.toml
    /// (mirrors, capabilities, CA files, client certificates, headers), or
    /// Docker's certs.d layout (DIR/<registry>/*.crt, *.cert, *.key).
    #[arg(long, global = true, value_name = "DIR")]
    hosts_dir: Option<PathBuf>,
    /// Trust the CA certificates in this PEM file too (repeatable).
    #[arg(long, global = true, value_name = "FILE")]
    tlscacert: Vec<PathBuf>,
    /// Present this client certificate (PEM) to registries that ask for one.
    #[arg(long, global = true, value_name = "FILE")]
    tlscert: Option<PathBuf>,
    /// The private key of --tlscert, when it is not in the same file.
    #[arg(long, global = true, value_name = "FILE", requires = "tlscert")]
    tlskey: Option<PathBuf>,
    /// Accept any registry certificate (for test registries: digests still
    /// catch changed content, but anyone in the middle can read it).
    #[arg(long, short = 'k', global = true)]
    skip_verify: bool,
    /// Fetch each blob of 64 MiB or more as N parallel 4 MiB ranged requests
    /// (1: one request per blob). Default: 4 for remote registries, 1 for
    /// loopback ones, where one stream is never the bottleneck.
    #[arg(long, global = true, value_name = "N", value_parser = parse_count)]
    ranges: Option<usize>,
    /// The platform to fetch and inspect: os/arch[/variant]. Default: this
    /// host's. Given, `push` pushes only this platform's manifest of an
    /// index; not given, the whole index.
    #[arg(long, global = true, value_parser = parse_platform)]
    platform: Option<Platform>,
    /// How images become filesystems. Default: overlay where it can mount
    /// (root, a kernel with overlayfs), else native; for `rootfs --unmount`,
    /// whichever of the store's snapshotters has the rootfs.
    #[arg(long, global = true, value_enum)]
    snapshotter: Option<SnapshotterKind>,
    /// How many layers `pull`, `unpack` and `rootfs` apply at once on the
    /// overlay snapshotter (each layer is its own directory there).
    #[arg(long, global = true, value_name = "N", default_value_t = 3, value_parser = parse_count)]
    unpack_concurrency: usize,
    /// Whether snapshot commits wait for the disk. `writeback` skips the
    /// flush, as containerd does: faster, most on native, but a power loss
    /// may leave committed layers with empty files.
    #[arg(long, global = true, value_enum, default_value_t = DurabilityArg::Synced)]
    snapshot_durability: DurabilityArg,
    #[command(subcommand)]
    command: Command,
}

/// The choices of `--snapshot-durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DurabilityArg {
    /// Flush the filesystem before each commit is recorded.
    Synced,
    /// Let the kernel write snapshots back in its own time.
    Writeback,
}

/// The snapshotters `--snapshotter` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SnapshotterKind {
    /// overlayfs layers, one directory of changes per layer.
    Overlay,
    /// A full tree per layer (unchanged files hard-linked to the layer
    /// below when unpacking); works anywhere.
    Native,
}

impl SnapshotterKind {
    /// Each kind, in the order `prune` visits them.
    const ALL: [SnapshotterKind; 2] = [SnapshotterKind::Overlay, SnapshotterKind::Native];

    /// Its directory under the store's `snapshots/`.
    fn dir_name(self) -> &'static str {
        match self {
            SnapshotterKind::Overlay => "overlay",
            SnapshotterKind::Native => "native",
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a blob from stdin into the store, verified against its digest and size.
    Ingest(content::IngestArgs),
    /// List running ingests: REF OFFSET/TOTAL STARTED UPDATED.
    Active(content::ActiveArgs),
    /// List blobs: DIGEST SIZE AGE LABELS.
    List(content::ListArgs),
    /// Print the filesystem path of each blob.
    Path(content::DigestsArgs),
    /// Write the content of each blob to stdout.
    Get(content::DigestsArgs),
    /// Delete blobs.
    Delete(content::DeleteArgs),
    /// Write the raw manifest or blob a tag or digest names to stdout.
    FetchObject(image::FetchObjectArgs),
    /// Fetch the content of an image (the --platform's, or every platform's
    /// with --all-platforms) into the store and record its name.
    Fetch(image::FetchArgs),
    /// Push an image from the store to a registry.
    Push(image::PushArgs),
    /// List images: REF TYPE DIGEST SIZE PLATFORMS; `check` and `rm` them.
    Images(image::ImagesArgs),
    /// Remove content and snapshots no image needs, and stale ingests; what a
    /// running fetch, pull, unpack, import, rootfs, push or export holds (its
    /// lease) stays.
    Prune(image::PruneArgs),
    /// Fetch an image and unpack it into snapshots, overlapped.
    Pull(rootfs::PullArgs),
    /// Apply a layer read from stdin to a directory; prints its diff ID.
    Apply(rootfs::ApplyArgs),
    /// Mount (or copy) an image's filesystem at a directory.
    Rootfs(rootfs::RootfsArgs),
    /// Write an image into an OCI image layout (read by skopeo, umoci).
    Export(layout::ExportArgs),
    /// Read the images of an OCI image layout into the stores.
    Import(layout::ImportArgs),
    /// Unpack an image straight from an OCI image layout into snapshots
    /// (like `umoci unpack`); prints the chain ID, which `rootfs` mounts. No
    /// image is recorded, so `prune` takes the snapshots once `--grace` is
    /// over: `import` the layout to keep them.
    Unpack(layout::UnpackArgs),
}

impl Command {
    /// Whether the command only reads or changes a store that must
    /// already exist: run on a mistyped `--root`, it says so rather than
    /// answer from an empty store it made there.
    fn needs_a_store(&self) -> bool {
        matches!(
            self,
            Command::Active(_)
                | Command::List(_)
                | Command::Path(_)
                | Command::Get(_)
                | Command::Delete(_)
                | Command::Push(_)
                | Command::Images(_)
                | Command::Prune(_)
                | Command::Export(_)
        )
    }

    /// Whether the command writes ingests, which an interrupted run leaves
    /// for the next to resume.
    fn ingests(&self) -> bool {
        matches!(
            self,
            Command::Ingest(_) | Command::Fetch(_) | Command::Pull(_) | Command::Import(_)
        )
    }
}

/// The stores under the root: content in `content/`, image names in `images.redb`.
pub(crate) struct Stores {
    pub(crate) content: LocalStore,
    pub(crate) images: DbImageStore,
}

fn parse_platform(text: &str) -> Result<Platform, String> {
    text.parse()
        .map_err(|e: ocidist::images::Error| e.to_string())
}

/// `--root`, else the default store root: $OCIDIST_ROOT, else
/// /var/lib/ocidist for root, else under the user's data directory. An
/// empty variable counts as unset, and a relative `XDG_DATA_HOME` or `HOME`
/// is ignored, as the XDG Base Directory specification says: a store is
/// never made in whatever directory the command runs in by accident.
fn store_root(given: Option<&Path>) -> Result<PathBuf, Failure> {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let absolute = |name: &str| set(name).map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(root) = given {
        // Never empty: clap refuses `--root ""`.
        return Ok(root.to_path_buf());
    }
    if let Some(root) = set("OCIDIST_ROOT") {
        return Ok(PathBuf::from(root));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/lib/ocidist"));
    }
    absolute("XDG_DATA_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".local/share")))
        .map(|data| data.join("ocidist"))
        .ok_or_else(|| {
            Failure::new(
                "find the store",
                "neither $XDG_DATA_HOME nor $HOME is an absolute path: say where with \
                 --root or $OCIDIST_ROOT",
            )
        })
}

/// `--user`: `USER:PASSWORD`, split at the first colon (passwords may hold more).
fn parse_user(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((_, "")) => Err(
            "expected USER:PASSWORD, with a password (dist does not prompt for one)".to_string(),
        ),
        Some((user, password)) if !user.is_empty() => Ok((user.to_string(), password.to_string())),
        _ => Err("expected USER:PASSWORD".to_string()),
    }
}

/// A count of things done at once: 1 or more.
pub(crate) fn parse_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(count) => Ok(count),
        Err(e) => Err(format!("{text:?}: {e}")),
    }
}

/// `--timeout`: a duration longer than nothing.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be longer than 0".to_string()),
        limit => Ok(limit),
    }
}

/// A duration: a number and its unit, `ms`, `s`, `m` or `h` (a number alone
/// is seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len()),
    );
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("bad duration unit in {text:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("duration {text:?} out of range"))
}

/// A failure to report: what was being done, and why it failed.
#[derive(Debug)]
struct Failure {
    what: String,
    cause: Box<dyn std::error::Error + Send + Sync>,
}

impl Failure {
    fn new(
        what: impl Into<String>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Failure {
            what: what.into(),
            cause: cause.into(),
        }
    }
}

type CmdResult = Result<(), Failure>;

/// Removes each item, going on past failures (each said on stderr) as `rm`
/// does, and fails at the end if any failed.
async fn remove_each<T, E>(
    what: &str,
    items: &[T],
    mut remove: impl AsyncFnMut(&T) -> Result<String, E>,
) -> CmdResult
where
    T: std::fmt::Display,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut failed = 0;
    for item in items {
        match remove(item).await {
            Ok(removed) => output::report!("{removed}"),
            Err(e) => {
                let e = e.into();
                eprintln!(
                    "dist: {what} {item}: {}",
                    ocidist::content::Report::new(&*e)
                );
                failed += 1;
            }
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(Failure::new(
            what,
            format!("{n} of {} not removed", items.len()),
        )),
    }
}

async fn run(cli: Cli) -> CmdResult {
    let root = store_root(cli.root.as_deref())?;
    if cli.command.needs_a_store() && !root.exists() {
        return Err(Failure::new(
            format!("open {}", root.display()),
            "no store there (fetch, pull, ingest and import make one; --root or \
             $OCIDIST_ROOT says where)",
        ));
    }
    let open = |what: &str, e: Box<dyn std::error::Error + Send + Sync>| {
        Failure::new(format!("open {what} {}", root.display()), e)
    };
    // Each command opens only the stores it uses: on a full disk, creating
    // an image store must not keep `active`, `list` or `delete` from running.
    let content_store =
        || LocalStore::open(root.join("content")).map_err(|e| open("content store in", e.into()));
    let stores = || -> Result<Stores, Failure> {
        Ok(Stores {
            content: content_store()?,
            images: DbImageStore::open(root.join("images.redb"))
                .map_err(|e| open("image store in", e.into()))?,
        })
    };
    // What a fetch, pull or unpack relies on stays through a `dist prune`
    // in another process for as long as the command runs.
    // `Err` with what failed: opening the leases, or taking one.
    let try_lease = || async {
        let leases = Leases::open(root.join("leases")).map_err(|e| ("leases in", e))?;
        // A prune holds the leases while it decides and removes.
        output::saying_if_slow(leases.acquire(), || {
            format!(
                "waiting for a prune in another process (it holds {})",
                leases.path().join(".lock").display()
            )
        })
        .await
        .map_err(|e| ("a lease in", e))
    };
    let lease = || async { try_lease().await.map_err(|(what, e)| open(what, e.into())) };
    let remote = image::Remote {
        plain_http: cli.plain_http,
        hosts_dir: cli.hosts_dir.clone(),
        user: cli.user.clone(),
        tls: image::Tls {
            ca_files: cli.tlscacert.clone(),
            cert: cli.tlscert.clone(),
            key: cli.tlskey.clone(),
            skip_verify: cli.skip_verify,
        },
        ranges: cli.ranges,
        platform: cli.platform.clone().unwrap_or_else(Platform::host),
        platform_given: cli.platform.is_some(),
        unpack_concurrency: cli.unpack_concurrency,
    };
    let kind = cli
        .snapshotter
        .unwrap_or(if ocidist::snapshot::overlay::supported() {
            SnapshotterKind::Overlay
        } else {
            SnapshotterKind::Native
        });
    let durability = match cli.snapshot_durability {
        DurabilityArg::Synced => ocidist::snapshot::Durability::Synced,
        DurabilityArg::Writeback => ocidist::snapshot::Durability::Writeback,
    };
    // `clean_up`: whether opening sweeps what killed processes left, quietly
    // (a prune does it itself, and reports it).
    let open_snapshotter =
        |kind: SnapshotterKind,
         clean_up|
         -> Result<std::sync::Arc<dyn ocidist::snapshot::Snapshotter>, Failure> {
            let dir = root.join("snapshots").join(kind.dir_name());
            let options = ocidist::snapshot::OpenOptions {
                durability,
                clean_up,
            };
            let opened: Result<std::sync::Arc<dyn ocidist::snapshot::Snapshotter>, _> = match kind {
                SnapshotterKind::Overlay => {
                    ocidist::snapshot::overlay::OverlaySnapshotter::open_with_options(dir, options)
                        .map(|s| std::sync::Arc::new(s) as _)
                }
                SnapshotterKind::Native => {
                    ocidist::snapshot::native::NativeSnapshotter::open_with_options(dir, options)
                        .map(|s| std::sync::Arc::new(s) as _)
                }
            };
            let opened = opened.map_err(|e| open("snapshotter in", e.into()))?;
            *OPENED_SNAPSHOTTER.lock().unwrap_or_else(|p| p.into_inner()) = Some(opened.clone());
            Ok(opened)
        };
    let snapshotter = |kind| open_snapshotter(kind, true);
    match cli.command {
        Command::Ingest(args) => content::ingest(&content_store()?, args).await,
        Command::Active(args) => content::active(&content_store()?, args).await,
        Command::List(args) => content::list(&content_store()?, args).await,
        Command::Path(args) => content::path(&content_store()?, args).await,
        Command::Get(args) => content::get(&content_store()?, args).await,
        Command::Delete(args) => content::delete(&content_store()?, args).await,
        Command::FetchObject(args) => image::fetch_object_cmd(&remote, args).await,
        Command::Fetch(args) => image::fetch(&stores()?, lease().await?, &remote, args).await,
        Command::Push(args) => image::push(&stores()?, lease().await?, &remote, args).await,
        Command::Images(args) => image::images(&stores()?, &remote, args).await,
        Command::Prune(args) => {
            // Every snapshotter that has been used, whichever --snapshotter says.
            let mut snapshotters = Vec::new();
            for kind in SnapshotterKind::ALL {
                if root.join("snapshots").join(kind.dir_name()).exists() {
                    snapshotters.push((kind.dir_name(), open_snapshotter(kind, false)?));
                }
            }
            let leases =
                Leases::open(root.join("leases")).map_err(|e| open("leases in", e.into()))?;
            image::prune(&stores()?, &leases, &snapshotters, args).await
        }
        Command::Pull(args) => {
            rootfs::pull_cmd(
                &stores()?,
                lease().await?,
                &remote,
                &snapshotter(kind)?,
                args,
            )
            .await
        }
        Command::Apply(args) => rootfs::apply_cmd(args).await,
        Command::Export(args) => {
            let lease = match try_lease().await {
                Ok(lease) => Some(lease),
                // A store that cannot be written (a read-only mount, another
                // user's): no prune from here can change it either.
                Err((_, e)) if cannot_be_written(&e) => None,
                Err((what, e)) => return Err(open(what, e.into())),
            };
            layout::export(&stores()?, lease, args).await
        }
        Command::Import(args) => layout::import(&stores()?, lease().await?, args).await,
        Command::Unpack(args) => {
            layout::unpack_cmd(&snapshotter(kind)?, lease().await?, &remote, args).await
        }
        Command::Rootfs(args) => {
            let lease = match try_lease().await {
                Ok(lease) => Some(lease),
                // A copy only reads a store that cannot be written, and no
                // prune from here can change it.
                Err((_, e)) if args.copy && cannot_be_written(&e) => None,
                Err((what, e)) => return Err(open(what, e.into())),
            };
            let snapshotter = match (&args.unmount, cli.snapshotter) {
                // Not named: whichever of the store's snapshotters has the
                // rootfs, and none made that the store never used.
                (Some(dest), None) => {
                    let key = rootfs::rootfs_key(dest);
                    let used: Vec<SnapshotterKind> = std::iter::once(kind)
                        .chain(SnapshotterKind::ALL.into_iter().filter(|k| *k != kind))
                        .filter(|k| root.join("snapshots").join(k.dir_name()).exists())
                        .collect();
                    let mut found = None;
                    for candidate in used {
                        let opened = snapshotter(candidate)?;
                        let holds = opened.stat(&key).await.is_ok();
                        if found.is_none() || holds {
                            found = Some(opened);
                        }
                        if holds {
                            break;
                        }
                    }
                    match found {
                        Some(opened) => {
                            // The one used, for `main` to close.
                            *OPENED_SNAPSHOTTER.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(opened.clone());
                            opened
                        }
                        None => snapshotter(kind)?,
                    }
                }
                _ => snapshotter(kind)?,
            };
            rootfs::rootfs_cmd(&stores()?, lease, &remote, &snapshotter, args).await
        }
    }
}

/// Whether `e` says the store cannot be written here (a read-only mount,
/// another user's store), as the stores' own read-only fallbacks tell it.
fn cannot_be_written(e: &ocidist::content::Error) -> bool {
    matches!(
        e,
        ocidist::content::Error::Io { source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
            )
    )
}

/// The snapshotter the command opened, for [`main`] to remove the
/// extractions it left unfinished when a signal stopped it, and to close.
#[allow(clippy::type_complexity)]
static OPENED_SNAPSHOTTER: std::sync::Mutex<
    Option<std::sync::Arc<dyn ocidist::snapshot::Snapshotter>>,
> = std::sync::Mutex::new(None);

/// Why a command stopped early.
enum Stop {
    Failed(Failure),
    /// `--timeout` dropped the command.
    TimedOut(Failure),
    /// A signal: its number and name.
    Interrupted(libc::c_int, &'static str),
}

/// SIGINT and SIGTERM, caught from here on (`None` if they cannot be);
/// call within the runtime.
fn catch_signals() -> Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)> {
    use tokio::signal::unix::{SignalKind, signal};
    Some((
        signal(SignalKind::interrupt()).ok()?,
        signal(SignalKind::terminate()).ok()?,
    ))
}

/// Waits for SIGINT or SIGTERM (as [`catch_signals`] caught them); returns
/// which came.
async fn interrupted(
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
) -> (libc::c_int, &'static str) {
    let Some((mut interrupt, mut terminate)) = signals else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => (libc::SIGINT, "SIGINT"),
        _ = terminate.recv() => (libc::SIGTERM, "SIGTERM"),
    }
}

/// Tells glibc's allocator to keep memory it is given back for reuse instead
/// of returning it to the kernel (by unmapping large blocks and trimming the
/// heap): fetching, a stream's buffers come and go by the megabyte, and
/// every page handed back costs a fault and a zeroing when it is needed
/// again. On the benchmark VM, a bulk:8x64m fetch took 6,800-7,100 page
/// faults with this and 8,600-11,600 without, and zeroing pages had been 12 %
/// of its CPU samples. A library leaves this choice to its program.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Raises the soft limit on open files to the hard one, as Go programs
/// (containerd, skopeo) do at start: an overlay pull holds a directory open
/// for each layer it stages, and 1,024 (or a shell's lower `ulimit -n`) is
/// a limit kept for old `select(2)` users, not for us.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            // Left as it was if refused: only a pull of very many layers needs more.
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The command and its operands (`fetch REF`, `images rm NAME`), as the
/// command's own errors name them.
fn command_label(command: &clap::Command, matches: &clap::ArgMatches) -> String {
    let Some((name, sub)) = matches.subcommand() else {
        return "run".to_string();
    };
    let mut words = vec![name.to_string()];
    if let Some(command) = command.find_subcommand(name) {
        for arg in command.get_positionals() {
            if let Ok(Some(values)) = sub.try_get_raw(arg.get_id().as_str()) {
                words.extend(values.map(|v| v.to_string_lossy().into_owned()));
            }
        }
        if sub.subcommand().is_some() {
            words.push(command_label(command, sub));
        }
    }
    words.join(" ")
}

fn main() -> ExitCode {
    keep_freed_memory();
    raise_open_file_limit();
    let command = <Cli as clap::CommandFactory>::command();
    let matches = command.clone().get_matches();
    // Named in what the main thread says of the command (a --timeout).
    let command_name = command_label(&command, &matches);
    let cli =
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let debug = cli.debug;
    output::set_quiet(cli.quiet);
    let timeout = cli.timeout;
    let ingests = cli.command.ingests();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dist: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Caught before the command starts: a signal at any moment of it is
    // the command's to answer.
    let signals = {
        let _entered = runtime.enter();
        catch_signals()
    };
    // The command runs on a thread of its own: should it block there (a
    // credentials file that is a FIFO, a hung network mount), the main
    // thread still sees the signal or the timeout.
    let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
    let (finish, mut finished) = tokio::sync::oneshot::channel();
    let handle = runtime.handle().clone();
    let spawned = std::thread::Builder::new()
        .name("dist-command".into())
        // The main thread's stack, which the command had before.
        .stack_size(8 << 20)
        .spawn(move || {
            let result = handle.block_on(async move {
                tokio::select! {
                    result = run(cli) => Some(result),
                    _ = cancelled => None,
                }
            });
            let _ = finish.send(result);
        });
    if let Err(e) = spawned {
        eprintln!("dist: start the command's thread: {e}");
        return ExitCode::FAILURE;
    }
    let result = runtime.block_on(async move {
        let limit = async {
            match timeout {
                Some(limit) => {
                    tokio::time::sleep(limit).await;
                    limit
                }
                None => std::future::pending().await,
            }
        };
        let stopped = tokio::select! {
            done = &mut finished => return match done {
                Ok(Some(result)) => result.map_err(Stop::Failed),
                // Cancelled only below; a panic was printed already.
                Ok(None) | Err(_) => Err(Stop::Failed(Failure::new("run", "the command panicked"))),
            },
            limit = limit => Stop::TimedOut(Failure::new(
                command_name,
                format!("timed out after {limit:?} (--timeout)"),
            )),
            (signal, name) = interrupted(signals) => Stop::Interrupted(signal, name),
        };
        // Dropping the command stops it between writes: what was written
        // stays in the ingests, and the locks go with the process. Waited
        // for (briefly: a blocked thread cannot be), so that what follows
        // does not race its last writes.
        drop(cancel);
        let _ = tokio::time::timeout(Duration::from_secs(2), finished).await;
        Err(stopped)
    });
    // Layers half applied when a signal or the timeout dropped the
    // command's unpack: an unpack removes them itself only when it fails.
    // Dropped, its layers stop at their next read.
    let dropped = matches!(result, Err(Stop::Interrupted(..) | Stop::TimedOut(_)));
    let snapshotter = OPENED_SNAPSHOTTER
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let (true, Some(snapshotter)) = (dropped, &snapshotter) {
        let removed = runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                ocidist::snapshot::remove_own_extractions(snapshotter.as_ref()),
            )
            .await
        });
        if let Ok(Err(e)) = removed {
            eprintln!(
                "dist: remove unfinished extractions: {}",
                ocidist::content::Report::new(&e)
            );
        }
    }
    // Blocking writes still running must not hold the exit up for long.
    runtime.shutdown_timeout(Duration::from_secs(2));
    // Closed, its database is left clean: another process opens it without
    // a repair, and one that may not write it can read it.
    drop(snapshotter);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Stop::Interrupted(signal, name)) => {
            let kept = if ingests {
                "; ingests are kept and the next run resumes them"
            } else {
                ""
            };
            eprintln!("dist: interrupted by {name}{kept}");
            output::die_by(signal);
            ExitCode::from(128 + signal as u8)
        }
        Err(Stop::Failed(failure) | Stop::TimedOut(failure)) => {
            eprintln!(
                "dist: {}: {}",
                failure.what,
                ocidist::content::Report::new(&*failure.cause)
            );
            if debug {
                eprintln!("{:?}", failure.cause);
            }
            ExitCode::FAILURE
        }
    }
}
