//! `dist`: containerd's original distribution tool, on ocidist's public API.
//!
//! Commands that work on the content store (`ingest`, `active`, `list`, `path`,
//! `get`, `delete`) compose in shell pipelines, as the original did:
//!
//! ```text
//! dist ingest my-ref --expected-digest sha256:… --expected-size 1234 < blob
//! dist list -q | xargs dist delete
//! ```
//!
//! Errors print one line, `dist: <what>: <cause>`, and exit 1; usage errors exit 2.

mod content;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ocidist::content::local::LocalStore;

/// containerd's distribution primitives: ingest, inspect and manage content.
#[derive(Debug, Parser)]
#[command(name = "dist", version)]
struct Cli {
    /// Store root. Default: $OCIDIST_ROOT, else /var/lib/ocidist as root, else
    /// $XDG_DATA_HOME/ocidist (~/.local/share/ocidist).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Print debugging details on errors.
    #[arg(long, global = true)]
    debug: bool,
    /// Give up after this long (e.g. 30s, 5m, 1h).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    #[command(subcommand)]
    command: Command,
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
    Delete(content::DigestsArgs),
}

fn default_root() -> PathBuf {
    if let Some(root) = std::env::var_os("OCIDIST_ROOT") {
        return PathBuf::from(root);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/ocidist");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("ocidist")
}

fn parse_duration(text: &str) -> Result<Duration, String> {
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
    Ok(Duration::from_secs_f64(seconds))
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

async fn run(cli: Cli) -> CmdResult {
    let root = cli.root.clone().unwrap_or_else(default_root);
    let store = LocalStore::open(&root)
        .map_err(|e| Failure::new(format!("open store {}", root.display()), e))?;
    match cli.command {
        Command::Ingest(args) => content::ingest(&store, args).await,
        Command::Active(args) => content::active(&store, args).await,
        Command::List(args) => content::list(&store, args).await,
        Command::Path(args) => content::path(&store, args).await,
        Command::Get(args) => content::get(&store, args).await,
        Command::Delete(args) => content::delete(&store, args).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let debug = cli.debug;
    let timeout = cli.timeout;
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
    let result = runtime.block_on(async move {
        match timeout {
            Some(limit) => tokio::time::timeout(limit, run(cli))
                .await
                .unwrap_or_else(|_| {
                    Err(Failure::new("dist", format!("timed out after {limit:?}")))
                }),
            None => run(cli).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("dist: {}: {}", failure.what, failure.cause);
            if debug {
                eprintln!("{:?}", failure.cause);
            }
            ExitCode::FAILURE
        }
    }
}
