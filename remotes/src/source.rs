//! Where content came from: containerd's distribution-source labels.
//!
//! A fetch records, on each blob it commits, the repository it came from
//! under `containerd.io/distribution.source.<registry>` (a comma-separated
//! list of repository paths). A later push to the same registry reads the
//! label, carried on the descriptor as an annotation, and asks the registry to
//! *mount* the blob from that repository instead of uploading it again.
//! Content already in the store learns each new source too (a fetch's
//! [`append_source_handler`], a push's [`append_source_label`]), as
//! containerd's `AppendDistributionSourceLabel` does.

use async_trait::async_trait;
use oci_spec::image::Descriptor;
use ocidist_content::{Digest, Labels, Manager};
use ocidist_images::{Flow, Handler};

use crate::Reference;

/// The prefix of the label (and descriptor annotation) that lists the
/// repositories of a registry a blob is known to be in; the registry follows.
pub const DISTRIBUTION_SOURCE_PREFIX: &str = "containerd.io/distribution.source.";

/// The label key for `registry` (as named in references: `docker.io`,
/// `127.0.0.1:5000`).
pub fn source_label_key(registry: &str) -> String {
    format!("{DISTRIBUTION_SOURCE_PREFIX}{registry}")
}

/// The repositories of `registry` that `labels_or_annotations` says hold the
/// blob, in the order recorded.
pub fn source_repositories<'a>(
    labels_or_annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
    registry: &str,
) -> Vec<String> {
    let key = source_label_key(registry);
    labels_or_annotations
        .into_iter()
        .filter(|(k, _)| **k == key)
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect()
}

/// `existing` (a label value, possibly empty) with `repository` added once.
pub fn append_source(existing: Option<&str>, repository: &str) -> String {
    let mut repositories: Vec<&str> = existing
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .collect();
    if !repositories.contains(&repository) {
        repositories.push(repository);
    }
    repositories.join(",")
}

/// The labels a fetch from `reference` gives a blob it commits.
pub fn source_labels(reference: &Reference) -> Labels {
    Labels::from([(
        source_label_key(reference.registry()),
        reference.repository().to_string(),
    )])
}

/// `desc` with the distribution-source labels its blob has in `store` copied
/// into its annotations, where a [`Pusher`](crate::Pusher) looks for mount
/// sources. A blob the store does not know is returned unchanged.
pub async fn annotate_sources<M: Manager + ?Sized>(store: &M, desc: &Descriptor) -> Descriptor {
    let Ok(info) = store.info(desc.digest()).await else {
        return desc.clone();
    };
    let sources: Vec<(String, String)> = info
        .labels
        .into_iter()
        .filter(|(k, _)| k.starts_with(DISTRIBUTION_SOURCE_PREFIX))
        .collect();
    if sources.is_empty() {
        return desc.clone();
    }
    let mut annotated = desc.clone();
    let mut annotations = desc.annotations().clone().unwrap_or_default();
    annotations.extend(sources);
    annotated.set_annotations(Some(annotations));
    annotated
}

/// Adds `reference`'s repository to the distribution-source label of
/// `digest` in `store`, unless it is there already (then nothing is
/// written). A blob the store does not have is left alone, and so is one
/// whose label would grow past what a label may hold (4096 bytes of key and
/// value): a layer shared by many repositories of one registry keeps the
/// sources it has, and a fetch or push goes on, as containerd skips such an
/// append.
pub async fn append_source_label<M: Manager + ?Sized>(
    store: &M,
    digest: &Digest,
    reference: &Reference,
) -> ocidist_content::Result<()> {
    let mut info = match store.info(digest).await {
        Ok(info) => info,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    };
    let key = source_label_key(reference.registry());
    let current = info.labels.get(&key);
    let value = append_source(current.map(String::as_str), reference.repository());
    if current == Some(&value) {
        return Ok(());
    }
    let label = Labels::from([(key.clone(), value)]);
    if ocidist_content::helpers::validate_labels(&label).is_err() {
        return Ok(());
    }
    info.labels.extend(label);
    store.update(info, &[&format!("labels.{key}")]).await?;
    Ok(())
}

/// A handler that adds the repository of a fetch's reference to each
/// descriptor's distribution-source label ([`append_source_label`]): a blob
/// fetched before from elsewhere, and so not committed by this fetch, learns
/// this source too. Chain it after the fetch handler; it returns no children.
pub fn append_source_handler<M: Manager>(store: M, reference: Reference) -> AppendSource<M> {
    AppendSource { store, reference }
}

/// See [`append_source_handler`].
pub struct AppendSource<M> {
    store: M,
    reference: Reference,
}

#[async_trait]
impl<M: Manager> Handler for AppendSource<M> {
    async fn handle(&self, desc: &Descriptor) -> ocidist_images::Result<Flow> {
        append_source_label(&self.store, desc.digest(), &self.reference)
            .await
            .map_err(|e| {
                ocidist_images::Error::other(
                    e.kind(),
                    format!(
                        "label the source of {}: {}",
                        desc.digest(),
                        ocidist_content::Report::new(&e)
                    ),
                )
            })?;
        Ok(Flow::leaf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_listed_per_registry_and_appended_once() {
        let labels = Labels::from([
            (
                source_label_key("127.0.0.1:5000"),
                "team/app, other/app".to_string(),
            ),
            (source_label_key("docker.io"), "library/redis".to_string()),
        ]);
        assert_eq!(
            source_repositories(&labels, "127.0.0.1:5000"),
            ["team/app", "other/app"]
        );
        assert_eq!(source_repositories(&labels, "docker.io"), ["library/redis"]);
        assert!(source_repositories(&labels, "ghcr.io").is_empty());
        assert_eq!(append_source(None, "a/b"), "a/b");
        assert_eq!(append_source(Some("a/b,c/d"), "c/d"), "a/b,c/d");
        assert_eq!(append_source(Some("a/b"), "e/f"), "a/b,e/f");
        let reference: Reference = "redis".parse().unwrap();
        assert_eq!(
            source_labels(&reference),
            Labels::from([(
                "containerd.io/distribution.source.docker.io".to_string(),
                "library/redis".to_string()
            )])
        );
    }
}
