//! Image references: `[host[:port]/]path[:tag][@digest]`, normalised the way
//! Docker does (`redis` is `docker.io/library/redis:latest`).
//!
//! ```
//! use ocidist_remotes::Reference;
//!
//! let r: Reference = "redis".parse().unwrap();
//! assert_eq!(r.to_string(), "docker.io/library/redis:latest");
//! assert_eq!(r.api_host(), "registry-1.docker.io");
//!
//! let r: Reference = "127.0.0.1:5000/team/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse().unwrap();
//! assert_eq!((r.registry(), r.repository(), r.tag()), ("127.0.0.1:5000", "team/app", None));
//! ```

use std::fmt;
use std::str::FromStr;

use oci_spec::image::Digest;

use crate::{Error, Result};

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The tag used when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// The longest repository name accepted (as distribution's reference package).
const MAX_NAME: usize = 255;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// The registry as named in the reference: `docker.io`, `ghcr.io`,
    /// `localhost:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host (and port) that serves the registry API: the registry, except
    /// `registry-1.docker.io` for `docker.io`.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The repository path: `library/redis`, `team/app`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference has one (`latest` is filled in only when it
    /// has neither tag nor digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry's `manifests/` endpoint for: the digest if
    /// pinned, else the tag.
    pub fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository with `object` (a tag, or a digest) instead.
    pub fn with_object(&self, object: &str) -> Result<Reference> {
        if object.contains(['@', '/']) {
            // Else the error would quote a reference nobody wrote.
            return Err(Error::InvalidReference {
                input: object.to_string(),
                reason: "an object is a tag or a digest, not both, and names no repository"
                    .to_string(),
            });
        }
        let separator = if object.contains(':') { "@" } else { ":" };
        format!("{}{separator}{object}", self.name()).parse()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidReference {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(invalid("empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let digest = Digest::try_from(digest)
                    .map_err(|e| invalid(&format!("bad digest {digest:?}: {e}")))?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // The tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let (name, tag) = rest.split_at(last_slash + i);
                (name, Some(&tag[1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(invalid(&format!(
                "bad tag {tag:?}: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
            )));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if looks_like_host(first) => (first.to_string(), path.to_string()),
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if !valid_host(&registry) {
            return Err(invalid(&format!(
                "bad registry {registry:?}: a host name or address, with an optional :port"
            )));
        }
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid("repository names must be lowercase"));
        }
        if repository.is_empty() || !repository.split('/').all(valid_path_component) {
            return Err(invalid(&format!(
                "bad repository {repository:?}: components of [a-z0-9] joined by '.', '_', '__' or '-'"
            )));
        }
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(invalid(&format!("name longer than {MAX_NAME} characters")));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// Docker's rule: the first component is a host if it has a '.' or a ':', or
/// is `localhost`.
fn looks_like_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// Docker's domain grammar: components of letters and digits with inner
/// hyphens, joined by '.', or a bracketed IPv6 address; then `:port`
/// optionally. (`./layout` is a path, not a registry called `.`.)
fn valid_host(host: &str) -> bool {
    let (name_ok, port) = if let Some(bracketed) = host.strip_prefix('[') {
        let Some((address, rest)) = bracketed.split_once(']') else {
            return false;
        };
        let port = match rest {
            "" => None,
            rest => match rest.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        let address_ok =
            !address.is_empty() && address.chars().all(|c| c.is_ascii_hexdigit() || c == ':');
        (address_ok, port)
    } else {
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        };
        (name.split('.').all(valid_domain_component), port)
    };
    name_ok && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn valid_domain_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    !bytes.is_empty()
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
}

fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `[a-z0-9]+` joined by separators `.`, `_`, `__` or any run of `-`.
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn hosts_by_docker_grammar() {
        for (input, registry) in [
            ("localhost:5000/a", "localhost:5000"),
            ("127.0.0.1:5000/a", "127.0.0.1:5000"),
            ("[::1]:5000/a", "[::1]:5000"),
            ("[fe80::1]/a", "[fe80::1]"),
            ("Registry-1.Example.com/a", "Registry-1.Example.com"),
        ] {
            assert_eq!(parse(input).registry(), registry, "{input}");
        }
    }

    #[test]
    fn docker_normalisation() {
        let cases = [
            ("redis", "docker.io/library/redis:latest"),
            ("redis:7", "docker.io/library/redis:7"),
            ("library/redis", "docker.io/library/redis:latest"),
            ("bitnami/redis:7.2", "docker.io/bitnami/redis:7.2"),
            ("docker.io/redis", "docker.io/library/redis:latest"),
            ("index.docker.io/redis", "docker.io/library/redis:latest"),
            ("ghcr.io/org/app:v1", "ghcr.io/org/app:v1"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/app:1", "localhost:5000/app:1"),
            (
                "127.0.0.1:5000/library/redis",
                "127.0.0.1:5000/library/redis:latest",
            ),
            ("[::1]:5000/app:x", "[::1]:5000/app:x"),
            ("quay.io/a/b/c:tag-1.2_3", "quay.io/a/b/c:tag-1.2_3"),
            (
                "my-registry.local/a__b/c.d/e---f",
                "my-registry.local/a__b/c.d/e---f:latest",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).to_string(), want, "{input}");
            assert_eq!(parse(want), parse(input), "{input} round-trips");
        }
    }

    #[test]
    fn parts_and_objects() {
        let r = parse("redis");
        assert_eq!(
            (r.registry(), r.api_host(), r.repository()),
            ("docker.io", "registry-1.docker.io", "library/redis")
        );
        assert_eq!(r.object(), "latest");
        let r = parse(&format!("localhost:5000/app:1@{DIGEST}"));
        assert_eq!(
            (r.tag(), r.digest().map(|d| d.to_string())),
            (Some("1"), Some(DIGEST.to_string()))
        );
        assert_eq!(r.object(), DIGEST, "a pinned digest wins over the tag");
        assert_eq!(r.api_host(), "localhost:5000");
        let r = parse(&format!("app@{DIGEST}"));
        assert_eq!(r.tag(), None, "no default tag beside a digest");
        assert_eq!(r.to_string(), format!("docker.io/library/app@{DIGEST}"));
        assert_eq!(
            r.with_object("v2").unwrap().to_string(),
            "docker.io/library/app:v2"
        );
        for both in [format!("v2@{DIGEST}"), "other/app".to_string()] {
            let err = r.with_object(&both).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{both:?}")) && err.contains("a tag or a digest, not both"),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_references_are_invalid_and_quoted() {
        for bad in [
            "",
            "Redis",
            "docker.io/Library/redis",
            "redis:",
            "redis:-x",
            "redis:.x",
            &format!("redis:{}", "t".repeat(129)),
            "redis@sha256:abc",
            "a//b",
            "a/b/",
            "-a",
            "a..b",
            "a_-b",
            &format!("example.com/{}", "a".repeat(250)),
            "./layout",
            "../x",
            "-bad.example.com/x",
            "example.com:/x",
            "example.com:50a/x",
            "[::1/x",
            "[fe80::1]5000/x",
        ] {
            let err = bad.parse::<Reference>().unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{bad:?}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
