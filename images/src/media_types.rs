//! The media types an image graph is made of, OCI and Docker alike.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI layer, uncompressed tar.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI layer, gzip.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI layer, zstd.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI non-distributable layer, uncompressed (deprecated by OCI, still seen).
pub const OCI_LAYER_NONDISTRIBUTABLE: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";
/// OCI non-distributable layer, gzip.
pub const OCI_LAYER_NONDISTRIBUTABLE_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// OCI non-distributable layer, zstd.
pub const OCI_LAYER_NONDISTRIBUTABLE_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker layer, gzip.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker layer, uncompressed (rare).
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker foreign layer (Windows base layers), fetched from its URLs first.
pub const DOCKER_LAYER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Docker layer, zstd.
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
/// Docker foreign layer, uncompressed.
pub const DOCKER_LAYER_FOREIGN_TAR: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar";
/// EROFS layer.
pub const EROFS_LAYER: &str = "application/vnd.erofs.layer.v1";
/// containerd checkpoint config (a config kind for GC labels).
pub const CONTAINERD_CHECKPOINT_CONFIG: &str =
    "application/vnd.containerd.container.checkpoint.config.v1+proto";
/// containerd CRIU checkpoint (a config kind for GC labels).
pub const CONTAINERD_CHECKPOINT_CRIU: &str =
    "application/vnd.containerd.container.criu.checkpoint.criu.tar";
/// Docker schema 1 manifest: refused.
pub const DOCKER_SCHEMA1_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker schema 1 signed manifest: refused.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// What part of an image a media type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A manifest (OCI or Docker schema 2): config and layers.
    Manifest,
    /// An index or manifest list: manifests.
    Index,
    /// An image config.
    Config,
    /// A layer.
    Layer,
    /// A Docker schema 1 manifest.
    Schema1,
    /// Anything else (signatures, attestations, ...): no children.
    Unknown,
}

/// A media type without its parameters (`;…`), in lower case: the form the
/// constants here are compared with.
pub fn base(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Classifies a media type, ignoring parameters (`;…`) and case.
pub fn kind(media_type: &str) -> Kind {
    match base(media_type).as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => Kind::Manifest,
        OCI_INDEX | DOCKER_MANIFEST_LIST => Kind::Index,
        OCI_CONFIG | DOCKER_CONFIG | CONTAINERD_CHECKPOINT_CONFIG | CONTAINERD_CHECKPOINT_CRIU => {
            Kind::Config
        }
        DOCKER_SCHEMA1_MANIFEST | DOCKER_SCHEMA1_SIGNED => Kind::Schema1,
        // As containerd: any OCI layer type, and Docker's by their base type.
        layer if layer.starts_with("application/vnd.oci.image.layer.") => Kind::Layer,
        layer
            if matches!(
                layer.split('+').next().unwrap_or_default(),
                DOCKER_LAYER
                    | DOCKER_LAYER_GZIP
                    | DOCKER_LAYER_ZSTD
                    | DOCKER_LAYER_FOREIGN
                    | DOCKER_LAYER_FOREIGN_TAR
                    | EROFS_LAYER
            ) =>
        {
            Kind::Layer
        }
        _ => Kind::Unknown,
    }
}

/// True for layers that are not to be pushed to a registry
/// (non-distributable and foreign layers): they are fetched from their
/// `urls` if they have any.
pub fn is_non_distributable(media_type: &str) -> bool {
    media_type.contains(".nondistributable.") || media_type.contains(".foreign.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_oci_and_docker_types() {
        assert_eq!(kind(OCI_MANIFEST), Kind::Manifest);
        assert_eq!(kind(DOCKER_MANIFEST), Kind::Manifest);
        assert_eq!(kind(OCI_INDEX), Kind::Index);
        assert_eq!(kind(DOCKER_MANIFEST_LIST), Kind::Index);
        assert_eq!(kind(DOCKER_CONFIG), Kind::Config);
        assert_eq!(kind(OCI_LAYER_ZSTD), Kind::Layer);
        assert_eq!(kind(DOCKER_LAYER_FOREIGN), Kind::Layer);
        assert_eq!(kind(DOCKER_LAYER_ZSTD), Kind::Layer);
        assert_eq!(
            kind("application/vnd.oci.image.layer.v1.tar+encrypted"),
            Kind::Layer
        );
        assert_eq!(kind(EROFS_LAYER), Kind::Layer);
        assert_eq!(kind(CONTAINERD_CHECKPOINT_CONFIG), Kind::Config);
        assert_eq!(kind(DOCKER_SCHEMA1_SIGNED), Kind::Schema1);
        assert_eq!(kind("application/vnd.in-toto+json"), Kind::Unknown);
    }

    #[test]
    fn parameters_and_case_are_ignored() {
        assert_eq!(
            kind("Application/VND.OCI.image.manifest.v1+json; charset=utf-8"),
            Kind::Manifest
        );
    }

    #[test]
    fn non_distributable_layers_are_recognised() {
        assert!(is_non_distributable(OCI_LAYER_NONDISTRIBUTABLE_ZSTD));
        assert!(is_non_distributable(DOCKER_LAYER_FOREIGN));
        assert!(!is_non_distributable(OCI_LAYER_GZIP));
    }
}
