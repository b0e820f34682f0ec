//! Reading manifests and indexes, validated before they are trusted, and the
//! questions asked of an image: its manifest for a platform, its config,
//! diff IDs, chain IDs, size, and whether all its content is present.

use std::collections::HashSet;

use oci_spec::image::{Descriptor, Digest, ImageConfiguration};
use ocidist_content::{Digester, Provider, read_blob};
use serde::Deserialize;

use crate::media_types::{self, Kind};
use crate::platforms::{Matcher, Platform};
use crate::{Error, Result};

/// Manifests and indexes larger than this are refused before they are read.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// The fields of a manifest or index that decide what it is; parsed leniently
/// so a document with the other kind's fields can be refused by name.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// A manifest's references: its config and layers, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The manifest's own descriptor.
    pub descriptor: Descriptor,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
}

/// Reads a manifest or index, refusing it before reading if over
/// [`MAX_MANIFEST_SIZE`], and a Docker schema 1 manifest outright.
pub async fn read_document<P: Provider + ?Sized>(
    provider: &P,
    desc: &Descriptor,
) -> Result<Vec<u8>> {
    let media_type = desc.media_type().to_string();
    if media_types::kind(&media_type) == Kind::Schema1 {
        return Err(Error::Schema1 {
            digest: desc.digest().clone(),
            media_type,
        });
    }
    refuse_oversized(desc)?;
    match read_blob(provider, desc, MAX_MANIFEST_SIZE).await {
        Err(ocidist_content::Error::TooLarge { size, .. }) => Err(too_large(desc, size)),
        other => Ok(other?),
    }
}

/// Refuses a manifest or index by the size its descriptor declares, over
/// [`MAX_MANIFEST_SIZE`], before anything downloads or reads it.
pub fn refuse_oversized(desc: &Descriptor) -> Result<()> {
    if desc.size() > MAX_MANIFEST_SIZE {
        return Err(too_large(desc, desc.size()));
    }
    Ok(())
}

fn too_large(desc: &Descriptor, size: u64) -> Error {
    Error::ManifestTooLarge {
        digest: desc.digest().clone(),
        media_type: desc.media_type().to_string(),
        size,
        limit: MAX_MANIFEST_SIZE,
    }
}

fn invalid(desc: &Descriptor, reason: impl Into<String>) -> Error {
    Error::InvalidDocument {
        digest: desc.digest().clone(),
        media_type: desc.media_type().to_string(),
        reason: reason.into(),
    }
}

/// Checks that a document's fields agree with the media type it is read as,
/// as containerd's `validateMediaType` does (its fix for the
/// ambiguous-manifest advisory): a manifest must not have `manifests` or
/// declare an index type; an index must not have `config` or `layers` or
/// declare a manifest type; anything with `fsLayers` is Docker schema 1. A key
/// counts as present whatever its value (`"manifests": []` included).
pub fn validate_document(body: &[u8], media_type: &str) -> std::result::Result<(), String> {
    let doc: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if doc.contains_key("fsLayers") {
        return Err("Docker schema 1 is not supported".into());
    }
    let declared = media_types::kind(
        doc.get("mediaType")
            .and_then(|v| v.as_str())
            .unwrap_or_default(),
    );
    match media_types::kind(media_type) {
        Kind::Manifest if doc.contains_key("manifests") || declared == Kind::Index => Err(format!(
            "expected a manifest but found an index ({media_type})"
        )),
        Kind::Index
            if doc.contains_key("config")
                || doc.contains_key("layers")
                || declared == Kind::Manifest =>
        {
            Err(format!(
                "expected an index but found a manifest ({media_type})"
            ))
        }
        _ => Ok(()),
    }
}

/// Decodes the children named by `body`, the content of `desc`: config and
/// layers of a manifest, manifests of an index, nothing for anything else.
/// The document is validated first (see [`validate_document`]).
pub fn decode_children(desc: &Descriptor, body: &[u8]) -> Result<Vec<Descriptor>> {
    let kind = media_types::kind(desc.media_type().as_ref());
    if !matches!(kind, Kind::Manifest | Kind::Index) {
        return Ok(Vec::new());
    }
    if let Err(reason) = validate_document(body, desc.media_type().as_ref()) {
        if reason.contains("schema 1") {
            return Err(Error::Schema1 {
                digest: desc.digest().clone(),
                media_type: desc.media_type().to_string(),
            });
        }
        return Err(invalid(desc, reason));
    }
    let probe: Probe = serde_json::from_slice(body).map_err(|e| invalid(desc, e.to_string()))?;
    if kind == Kind::Manifest {
        let config = probe
            .config
            .ok_or_else(|| invalid(desc, "a manifest must have a \"config\""))?;
        let mut children = vec![config];
        children.extend(probe.layers.unwrap_or_default());
        Ok(children)
    } else {
        Ok(probe.manifests.unwrap_or_default())
    }
}

/// The media type a manifest or index says it has, or, when it does not say,
/// what its fields make it (`manifests`: an OCI index; `config`: an OCI
/// manifest). `None` for anything that is not such a JSON document.
pub fn sniff_media_type(body: &[u8]) -> Option<String> {
    let probe: Probe = serde_json::from_slice(body).ok()?;
    if let Some(media_type) = probe.media_type {
        return Some(media_type);
    }
    if probe.manifests.is_some() {
        Some(media_types::OCI_INDEX.to_string())
    } else if probe.config.is_some() {
        Some(media_types::OCI_MANIFEST.to_string())
    } else {
        None
    }
}

/// The children of `desc`, read from `provider` when it is a manifest or index.
pub async fn children<P: Provider + ?Sized>(
    provider: &P,
    desc: &Descriptor,
) -> Result<Vec<Descriptor>> {
    match media_types::kind(desc.media_type().as_ref()) {
        Kind::Manifest | Kind::Index | Kind::Schema1 => {
            let body = read_document(provider, desc).await?;
            decode_children(desc, &body)
        }
        _ => Ok(Vec::new()),
    }
}

/// The platform a descriptor declares, normalised.
pub fn descriptor_platform(desc: &Descriptor) -> Option<Platform> {
    desc.platform().as_ref().map(Platform::from_oci)
}

/// Resolves `image` (a manifest, or an index of them, nested or not) to the
/// manifest that best matches `matcher`.
///
/// In an index, manifests that declare a platform must match it; the best
/// ranked wins, earlier entries winning ties. Entries without a platform are
/// accepted after every platform match, as containerd does.
pub async fn manifest<P: Provider + ?Sized>(
    provider: &P,
    image: &Descriptor,
    matcher: &dyn Matcher,
) -> Result<Manifest> {
    resolve_manifest(provider, image, matcher, &mut None).await
}

/// [`manifest`], which leaves in `reading` the last document it read (or
/// tried to): the one missing when it fails with not found.
async fn resolve_manifest<P: Provider + ?Sized>(
    provider: &P,
    image: &Descriptor,
    matcher: &dyn Matcher,
    reading: &mut Option<Descriptor>,
) -> Result<Manifest> {
    let mut desc = image.clone();
    // Indexes may nest; a bound keeps a hostile cycle from looping forever.
    for _ in 0..16 {
        *reading = Some(desc.clone());
        match media_types::kind(desc.media_type().as_ref()) {
            Kind::Manifest => {
                let body = read_document(provider, &desc).await?;
                let mut children = decode_children(&desc, &body)?.into_iter();
                let config = children
                    .next()
                    .expect("decode_children returns the config first");
                return Ok(Manifest {
                    descriptor: desc,
                    config,
                    layers: children.collect(),
                });
            }
            Kind::Index => {
                let body = read_document(provider, &desc).await?;
                let candidates = decode_children(&desc, &body)?;
                desc = choose(provider, candidates, matcher)
                    .await?
                    .ok_or_else(|| Error::NoMatchingManifest {
                        digest: desc.digest().clone(),
                        platform: matcher.describe(),
                    })?;
            }
            Kind::Schema1 => {
                return Err(Error::Schema1 {
                    digest: desc.digest().clone(),
                    media_type: desc.media_type().to_string(),
                });
            }
            _ => return Err(invalid(&desc, "not a manifest or index")),
        }
    }
    Err(invalid(image, "indexes nested more than 16 deep"))
}

/// Like [`best_match`], but a manifest that declares no platform is judged by
/// its config's platform (read from `provider`), as containerd does: a
/// config that names none is no platform (only [`All`](crate::platforms::All)
/// takes it), and a manifest the store does not have (a pull limited to the
/// best platform leaves the others out) is no candidate.
async fn choose<P: Provider + ?Sized>(
    provider: &P,
    candidates: Vec<Descriptor>,
    matcher: &dyn Matcher,
) -> Result<Option<Descriptor>> {
    // An entry that declares a matching platform ranks ahead of every one
    // that declares none, so their configs need not be read: inside a pull,
    // reading them would wait for a fetch that never takes them.
    let declared = candidates.iter().filter(|c| c.platform().is_some());
    if let Some(best) = best_match(declared.cloned().collect(), matcher) {
        return Ok(Some(best));
    }
    let mut kept = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        let undeclared_manifest = candidate.platform().is_none()
            && media_types::kind(candidate.media_type().as_ref()) == Kind::Manifest;
        if undeclared_manifest {
            let platform = match config_platform(provider, &candidate).await {
                Ok(platform) => platform.unwrap_or_else(|| Platform::new("", "", None)),
                Err(e) if e.kind() == crate::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if !matcher.matches(&platform) {
                continue;
            }
        }
        kept.push(candidate);
    }
    Ok(best_match(kept, matcher))
}

/// The platform a manifest's config declares (`os`, `architecture`, `variant`).
pub async fn config_platform<P: Provider + ?Sized>(
    provider: &P,
    manifest: &Descriptor,
) -> Result<Option<Platform>> {
    let body = read_document(provider, manifest).await?;
    let children = decode_children(manifest, &body)?;
    let Some(config) = children.first() else {
        return Ok(None);
    };
    let body = read_document(provider, config).await?;
    #[derive(Deserialize)]
    struct ConfigPlatform {
        os: Option<String>,
        architecture: Option<String>,
        variant: Option<String>,
    }
    let parsed: ConfigPlatform =
        serde_json::from_slice(&body).map_err(|e| invalid(config, e.to_string()))?;
    Ok(match (parsed.os, parsed.architecture) {
        (Some(os), Some(arch)) => Some(Platform::new(&os, &arch, parsed.variant.as_deref())),
        _ => None,
    })
}

/// The platforms an image offers: the platforms its index entries declare
/// (nested indexes included; `unknown/unknown` entries, such as build
/// attestations, skipped), or, for a manifest, its config's platform.
pub async fn platforms<P: Provider + ?Sized>(
    provider: &P,
    image: &Descriptor,
) -> Result<Vec<Platform>> {
    let mut out: Vec<Platform> = Vec::new();
    let mut found: HashSet<Platform> = HashSet::new();
    // Each document read once: an index may list another a thousand times,
    // at each of several levels.
    let mut read: HashSet<(Digest, String)> = HashSet::new();
    let mut stack = vec![image.clone()];
    while let Some(desc) = stack.pop() {
        if !read.insert((desc.digest().clone(), desc.media_type().to_string())) {
            continue;
        }
        match media_types::kind(desc.media_type().as_ref()) {
            Kind::Index => {
                let body = read_document(provider, &desc).await?;
                let mut nested = Vec::new();
                for child in decode_children(&desc, &body)? {
                    match descriptor_platform(&child) {
                        Some(p) if p.os == "unknown" || p.architecture == "unknown" => {}
                        Some(p) => {
                            if found.insert(p.clone()) {
                                out.push(p);
                            }
                        }
                        None => nested.push(child),
                    }
                }
                stack.extend(nested.into_iter().rev());
            }
            Kind::Manifest => {
                let platform = match config_platform(provider, &desc).await {
                    Ok(platform) => platform,
                    // An index's manifest the store does not have (left out
                    // by a pull of one platform) offers nothing here.
                    Err(e)
                        if e.kind() == crate::ErrorKind::NotFound
                            && desc.digest() != image.digest() =>
                    {
                        None
                    }
                    Err(e) => return Err(e),
                };
                if let Some(p) = platform
                    && found.insert(p.clone())
                {
                    out.push(p);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The manifest or index in `candidates` that best matches, by rank, then order.
pub fn best_match(candidates: Vec<Descriptor>, matcher: &dyn Matcher) -> Option<Descriptor> {
    candidates
        .into_iter()
        .filter(|d| {
            matches!(
                media_types::kind(d.media_type().as_ref()),
                Kind::Manifest | Kind::Index
            )
        })
        .filter_map(|d| {
            let rank = match descriptor_platform(&d) {
                Some(platform) => matcher.rank(&platform)?,
                None => usize::MAX,
            };
            Some((rank, d))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, d)| d)
}

/// The image config of the manifest `image` resolves to for `matcher`.
pub async fn config<P: Provider + ?Sized>(
    provider: &P,
    image: &Descriptor,
    matcher: &dyn Matcher,
) -> Result<ImageConfiguration> {
    let manifest = manifest(provider, image, matcher).await?;
    let body = read_document(provider, &manifest.config).await?;
    serde_json::from_slice(&body).map_err(|e| invalid(&manifest.config, e.to_string()))
}

/// The diff IDs (digests of the uncompressed layers) from the image config.
///
/// Read as containerd's unpacker reads them, leniently: a config without
/// `rootfs`, or whose `diff_ids` is `null` (what Go writes for an empty
/// list), has none, and nothing else in it is looked at, so an image whose
/// config is not a full image config (a WASM module's names no `rootfs`)
/// is not an error. [`config`] reads the whole of it, strictly.
pub async fn diff_ids<P: Provider + ?Sized>(
    provider: &P,
    image: &Descriptor,
    matcher: &dyn Matcher,
) -> Result<Vec<Digest>> {
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Option<Vec<String>>,
    }
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        rootfs: Option<RootFs>,
    }
    let manifest = manifest(provider, image, matcher).await?;
    let body = read_document(provider, &manifest.config).await?;
    let config: Config =
        serde_json::from_slice(&body).map_err(|e| invalid(&manifest.config, e.to_string()))?;
    config
        .rootfs
        .and_then(|rootfs| rootfs.diff_ids)
        .unwrap_or_default()
        .iter()
        .map(|d| {
            Digest::try_from(d.as_str())
                .map_err(|e| invalid(&manifest.config, format!("bad diff ID {d:?}: {e}")))
        })
        .collect()
}

/// Chain IDs of a stack of diff IDs: the first is the first diff ID; each next
/// is `sha256(previous chain ID + " " + diff ID)`, as the OCI spec defines.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => {
                let mut digester = Digester::sha256();
                digester.update(format!("{parent} {diff_id}").as_bytes());
                digester.digest()
            }
        };
        out.push(next);
    }
    out
}

/// The chain ID of the whole root filesystem (the last chain ID), if any layer.
pub fn chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    chain_ids(diff_ids).pop()
}

/// The sum of the sizes of `image` and every blob it references for
/// `matcher` (an index counts only its best match), each blob counted once.
pub async fn size<P: Provider + ?Sized>(
    provider: &P,
    image: &Descriptor,
    matcher: &dyn Matcher,
) -> Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut count = |d: &Descriptor| {
        if seen.insert(d.digest().clone()) {
            total += d.size();
        }
    };
    let mut desc = image.clone();
    while media_types::kind(desc.media_type().as_ref()) == Kind::Index {
        count(&desc);
        let body = read_document(provider, &desc).await?;
        desc = choose(provider, decode_children(&desc, &body)?, matcher)
            .await?
            .ok_or_else(|| Error::NoMatchingManifest {
                digest: desc.digest().clone(),
                platform: matcher.describe(),
            })?;
    }
    let manifest = manifest(provider, &desc, matcher).await?;
    count(&manifest.descriptor);
    count(&manifest.config);
    manifest.layers.iter().for_each(&mut count);
    Ok(total)
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CheckReport {
    /// The manifest could be resolved (the index and manifest are present).
    pub manifest_present: bool,
    /// The blobs the image needs for the platform: config and layers.
    pub required: Vec<Descriptor>,
    /// Those of them that are in the store, whole.
    pub present: Vec<Descriptor>,
    /// Those that are not; or, when the manifest cannot be resolved, the
    /// document missing on the way there (the image's own, or the
    /// platform's manifest that an index names).
    pub missing: Vec<Descriptor>,
    /// Those the store has at another size than the manifest gives: its
    /// copy was cut short or grown since it was committed (a disk, a hand),
    /// and will not read as the image's. Remove it and fetch it again.
    pub damaged: Vec<Descriptor>,
    /// The platform asked for, when the image's index lists no manifest
    /// for it: the image is not available for it (containerd's `Check`
    /// says so as "not available", not as an error), and nothing is
    /// required or missing.
    pub no_manifest_for: Option<String>,
}

impl CheckReport {
    /// True when the manifest and every required blob are present, whole.
    pub fn complete(&self) -> bool {
        self.manifest_present && self.missing.is_empty() && self.damaged.is_empty()
    }
}

/// Checks that `image` is complete in `provider` for `matcher`: resolvable to a
/// manifest, with its config and every layer present at the size the
/// manifest gives (containerd's `Check` looks for presence only; digests
/// are not read again here either).
pub async fn check<P: Provider + ?Sized>(
    provider: &P,
    image: &Descriptor,
    matcher: &dyn Matcher,
) -> Result<CheckReport> {
    let mut reading = None;
    let manifest = match resolve_manifest(provider, image, matcher, &mut reading).await {
        Ok(manifest) => manifest,
        // The document missing: the image's own, or the platform's
        // manifest (or nested index) it chose.
        Err(Error::Content(e)) if e.is_not_found() => {
            return Ok(CheckReport {
                manifest_present: false,
                required: Vec::new(),
                present: Vec::new(),
                missing: vec![reading.unwrap_or_else(|| image.clone())],
                damaged: Vec::new(),
                no_manifest_for: None,
            });
        }
        Err(Error::NoMatchingManifest { platform, .. }) => {
            return Ok(CheckReport {
                manifest_present: false,
                required: Vec::new(),
                present: Vec::new(),
                missing: Vec::new(),
                damaged: Vec::new(),
                no_manifest_for: Some(platform),
            });
        }
        Err(e) => return Err(e),
    };
    let required: Vec<Descriptor> = std::iter::once(manifest.config.clone())
        .chain(manifest.layers.iter().cloned())
        .collect();
    let mut present = Vec::new();
    let mut missing = Vec::new();
    let mut damaged = Vec::new();
    for desc in &required {
        match provider.reader_at(desc).await {
            // The size costs nothing to compare; the digest would cost a
            // read of every byte.
            Ok(reader) if reader.size() != desc.size() => damaged.push(desc.clone()),
            Ok(_) => present.push(desc.clone()),
            Err(e) if e.is_not_found() => missing.push(desc.clone()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(CheckReport {
        manifest_present: true,
        required,
        present,
        missing,
        damaged,
        no_manifest_for: None,
    })
}
