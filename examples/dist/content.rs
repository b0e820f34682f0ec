//! Commands on the content store: ingest, active, list, path, get, delete.

use clap::Args;
use ocidist::content::local::LocalStore;
use ocidist::content::{
    CopySource, Digest, DigestAlgorithm, IngestManager, Labels, Manager, Provider, WriterOpts,
    copy, descriptor, open_writer,
};
use tokio::io::AsyncWriteExt;

use crate::{CmdResult, Failure, output};

#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// The ingest ref: the same ref resumes an interrupted ingest.
    reference: String,
    /// The digest the data must have; nothing is committed otherwise.
    #[arg(long, value_parser = parse_digest)]
    expected_digest: Option<Digest>,
    /// The size the data must have, in bytes.
    #[arg(long)]
    expected_size: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct ActiveArgs {
    /// Filters on ref, e.g. `ref==layer-sha256:…` (any may match).
    filters: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Filters such as `labels.KEY==VALUE` or `digest==sha256:…` (any may match).
    filters: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// Blob digests (`sha256:…`); none is not an error, so that
    /// `dist list -q | xargs dist delete` is fine on an empty store.
    #[arg(value_parser = parse_digest)]
    digests: Vec<Digest>,
}

#[derive(Debug, Args)]
pub(crate) struct DigestsArgs {
    /// Blob digests (`sha256:…`).
    #[arg(required = true, value_parser = parse_digest)]
    digests: Vec<Digest>,
}

/// A digest of an algorithm a store can hash: `redis:latest` has the form of
/// a digest (any `alg:encoded`), but is not one, as go-digest's `Parse` says.
pub(crate) fn parse_digest(text: &str) -> Result<Digest, String> {
    let digest = Digest::try_from(text).map_err(|e| format!("bad digest {text:?}: {e}"))?;
    match digest.algorithm() {
        DigestAlgorithm::Sha256 | DigestAlgorithm::Sha384 | DigestAlgorithm::Sha512 => Ok(digest),
        other => Err(format!(
            "bad digest {text:?}: unknown algorithm {other} (sha256, sha384 or sha512)"
        )),
    }
}

/// Reads stdin into the store under `reference`, resuming an earlier attempt:
/// the bytes the ingest already holds are read from stdin and dropped.
pub(crate) async fn ingest(store: &LocalStore, args: IngestArgs) -> CmdResult {
    let what = format!("ingest {}", args.reference);
    let mut opts = WriterOpts::new(&args.reference);
    opts.size = args.expected_size;
    opts.digest = args.expected_digest.clone();
    // Another process writing the same ref holds it until it is done.
    let opened = crate::output::saying_if_slow(open_writer(store, opts), || {
        format!("waiting for another process's ingest of {}", args.reference)
    });
    let mut writer = match opened.await {
        Ok(writer) => writer,
        // Another process already committed it: concurrent ingests are harmless.
        Err(e) if e.is_already_exists() => return Ok(()),
        Err(e) => return Err(Failure::new(what, e)),
    };
    // What an earlier attempt left: skipped from stdin, which brings the
    // whole blob again.
    let resumed_at = writer.status().await.map_or(0, |status| status.offset);
    let mut stdin = tokio::io::stdin();
    let result = copy(
        writer.as_mut(),
        CopySource::Stream(&mut stdin),
        args.expected_size,
        args.expected_digest.as_ref(),
        Labels::new(),
    )
    .await;
    if let Err(e) = result {
        // Keep what arrived for the next attempt.
        let _ = writer.shutdown().await;
        if let (ocidist::content::Error::ShortRead { .. }, 1..) = (&e, resumed_at) {
            return Err(Failure::new(
                what,
                format!(
                    "{} (a resumed ingest reads the whole blob again: the first \
                     {resumed_at} bytes, which the ingest had, were checked and skipped)",
                    ocidist::content::Report::new(&e)
                ),
            ));
        }
        return Err(Failure::new(what, e));
    }
    Ok(())
}

pub(crate) async fn active(store: &LocalStore, args: ActiveArgs) -> CmdResult {
    let filters: Vec<&str> = args.filters.iter().map(String::as_str).collect();
    let statuses = store
        .list_statuses(&filters)
        .await
        .map_err(|e| Failure::new("active", e))?;
    if output::quiet() {
        // The refs alone, as `list -q` prints digests and `images -q` names.
        for status in &statuses {
            crate::output::outln!("{}", status.reference);
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|s| {
            let total = s.total.map_or_else(|| "?".to_string(), |t| t.to_string());
            vec![
                s.reference.clone(),
                format!("{}/{}", s.offset, total),
                output::age(s.started_at) + " ago",
                output::age(s.updated_at) + " ago",
            ]
        })
        .collect();
    crate::output::out!(
        "{}",
        output::table(&["REF", "OFFSET/TOTAL", "STARTED", "UPDATED"], &rows)
    );
    Ok(())
}

pub(crate) async fn list(store: &LocalStore, args: ListArgs) -> CmdResult {
    let filters: Vec<&str> = args.filters.iter().map(String::as_str).collect();
    let mut infos = Vec::new();
    store
        .walk(&filters, &mut |info| {
            infos.push(info);
            Ok(())
        })
        .await
        .map_err(|e| Failure::new("list", e))?;
    infos.sort_by_key(|info| info.digest.to_string());
    // `list -q` is the global --quiet: digests only, for `xargs dist delete`.
    if output::quiet() {
        for info in &infos {
            crate::output::outln!("{}", info.digest);
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = infos
        .iter()
        .map(|info| {
            let labels: Vec<String> = info
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            vec![
                info.digest.to_string(),
                output::size(info.size),
                output::age(info.created_at),
                labels.join(","),
            ]
        })
        .collect();
    crate::output::out!(
        "{}",
        output::table(&["DIGEST", "SIZE", "AGE", "LABELS"], &rows)
    );
    Ok(())
}

pub(crate) async fn path(store: &LocalStore, args: DigestsArgs) -> CmdResult {
    for digest in &args.digests {
        store
            .info(digest)
            .await
            .map_err(|e| Failure::new(format!("path {digest}"), e))?;
        crate::output::outln!("{}", store.blob_path(digest).display());
    }
    Ok(())
}

pub(crate) async fn get(store: &LocalStore, args: DigestsArgs) -> CmdResult {
    let mut stdout = crate::output::stdout();
    for digest in &args.digests {
        let what = || format!("get {digest}");
        let reader = store
            .reader_at(&descriptor(digest.clone(), 0))
            .await
            .map_err(|e| Failure::new(what(), e))?;
        let mut stream = reader.into_async_read();
        tokio::io::copy(&mut stream, &mut stdout)
            .await
            .map_err(|e| Failure::new(what(), e))?;
    }
    stdout.flush().await.map_err(|e| Failure::new("get", e))
}

pub(crate) async fn delete(store: &LocalStore, args: DeleteArgs) -> CmdResult {
    crate::remove_each("delete", &args.digests, async |digest| {
        store.delete(digest).await.map(|()| digest.to_string())
    })
    .await
}
