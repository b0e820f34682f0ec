//! Where content came from: containerd's distribution-source labels.
//!
//! A fetch records, on each blob it commits, the repository it came from
//! under `containerd.io/distribution.source.<registry>` (a comma-separated
//! list of repository paths). A later push to the same registry reads the
//! label, carried on the descriptor as an annotation, and asks the registry to
//! *mount* the blob from that repository instead of uploading it again.

use oci_spec::image::Descriptor;
use ocidist_content::{Labels, Manager};

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
