//! Platforms (`os/arch[/variant]`): parsing, normalisation, the host's default,
//! and matchers that rank candidates best first.
//!
//! Normalisation makes equal what runtimes treat as equal: `aarch64` is
//! `arm64`, whose default variant is `v8`; `arm` defaults to `v7`; `x86_64` is
//! `amd64`, whose `v1` is no variant. Variants matter: an `arm64` host prefers
//! `arm64/v8`, then runs `arm/v8`…`arm/v5`; an `amd64/v3` host prefers `v3`,
//! then `v2`, `v1`, then `386`.
//!
//! ```
//! use ocidist_images::platforms::{Matcher, Platform, only};
//!
//! let host: Platform = "linux/aarch64".parse().unwrap();
//! assert_eq!(host.to_string(), "linux/arm64/v8");
//! let m = only(&host);
//! let arm7: Platform = "linux/arm/v7".parse().unwrap();
//! let arm5: Platform = "linux/arm/v5".parse().unwrap();
//! assert!(m.rank(&host) < m.rank(&arm7) && m.rank(&arm7) < m.rank(&arm5));
//! assert!(!m.matches(&"linux/amd64".parse().unwrap()));
//! ```

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// A platform: operating system, CPU architecture and variant, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    /// `linux`, `windows`, `darwin`, ...
    pub os: String,
    /// `amd64`, `arm64`, `arm`, `386`, `ppc64le`, ...
    pub architecture: String,
    /// `v8`, `v7`, `v3`, ... or `None`.
    pub variant: Option<String>,
}

const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];

const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

impl Platform {
    /// A platform from its parts, normalised.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let (architecture, variant) = normalize_arch(architecture, variant.unwrap_or(""));
        Platform {
            os: normalize_os(os),
            architecture,
            variant,
        }
    }

    /// The platform of this process, normalised (`linux/amd64`, `linux/arm64/v8`, ...).
    ///
    /// On 32-bit ARM Linux the variant is the CPU's, read from
    /// `/proc/cpuinfo` as containerd reads it (`linux/arm/v6` on a Raspberry
    /// Pi Zero, whose kernel says architecture 7 but whose model name says
    /// ARMv6), so that such a host does not pick a `v7` image it cannot run.
    /// Where the file does not say (an emulator), the variant is `v7`.
    pub fn host() -> Self {
        let variant = if std::env::consts::ARCH == "arm" {
            host_arm_variant()
        } else {
            None
        };
        let arch = match std::env::consts::ARCH {
            "x86" => "386",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "powerpc" => "ppc",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform::new(std::env::consts::OS, arch, variant)
    }

    /// The platform of an OCI descriptor or config.
    pub fn from_oci(platform: &oci_spec::image::Platform) -> Self {
        Platform::new(
            &platform.os().to_string(),
            &platform.architecture().to_string(),
            platform.variant().as_deref(),
        )
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = Error;

    /// Parses `os`, `arch`, `os/arch` or `os/arch/variant`. A single part is an
    /// OS (with the host's architecture) if it names one, else an architecture
    /// (with the host's OS).
    fn from_str(input: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidPlatform {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.len() > 64 {
            return Err(invalid("longer than 64 characters"));
        }
        let parts: Vec<&str> = input.split('/').collect();
        for part in &parts {
            if part.is_empty()
                || !part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            {
                return Err(invalid(&format!(
                    "component {part:?} must be letters, digits, '_', '.' or '-'"
                )));
            }
        }
        let host = Platform::host();
        match parts[..] {
            [one] => {
                let os = normalize_os(one);
                if KNOWN_OS.contains(&os.as_str()) {
                    return Ok(Platform { os, ..host });
                }
                let (architecture, variant) = normalize_arch(one, "");
                if KNOWN_ARCH.contains(&architecture.as_str()) {
                    return Ok(Platform {
                        os: host.os,
                        architecture,
                        variant,
                    });
                }
                Err(invalid("unknown operating system or architecture"))
            }
            [os, arch] => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] => Ok(Platform::new(os, arch, Some(variant))),
            _ => Err(invalid("expected os/arch[/variant]")),
        }
    }
}

fn normalize_os(os: &str) -> String {
    let os = os.to_ascii_lowercase();
    match os.as_str() {
        "macos" => "darwin".to_string(),
        _ => os,
    }
}

/// Canonical architecture and variant, as containerd's `normalizeArch`, except
/// that `arm64`'s default variant is spelled out as `v8`.
fn normalize_arch(arch: &str, variant: &str) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    let some = |v: &str| Some(v.to_string());
    let (arch, variant) = match arch.as_str() {
        "i386" | "386" => ("386", None),
        "x86_64" | "x86-64" | "amd64" => match variant.as_str() {
            "" | "v1" | "1" => ("amd64", None),
            v if v.starts_with('v') => ("amd64", some(v)),
            v => ("amd64", Some(format!("v{v}"))),
        },
        "aarch64" | "arm64" => match variant.as_str() {
            "" | "8" | "v8" | "v8.0" => ("arm64", some("v8")),
            "9" | "9.0" | "v9.0" => ("arm64", some("v9")),
            v => ("arm64", some(v)),
        },
        "armhf" => ("arm", some("v7")),
        "armel" => ("arm", some("v6")),
        "arm" => match variant.as_str() {
            "" | "7" | "v7" => ("arm", some("v7")),
            "5" | "6" | "8" => ("arm", Some(format!("v{variant}"))),
            v => ("arm", some(v)),
        },
        other => (other, (!variant.is_empty()).then(|| variant.clone())),
    };
    (arch.to_string(), variant)
}

/// The variant of this 32-bit ARM host's CPU, read once (see
/// [`Platform::host`]).
fn host_arm_variant() -> Option<&'static str> {
    static VARIANT: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    *VARIANT.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|cpuinfo| arm_variant_of_cpuinfo(&cpuinfo))
    })
}

/// The ARM variant a Linux `/proc/cpuinfo` says, as containerd's
/// `getCPUVariant` maps it: the first `CPU architecture` line, except that
/// an ARMv6 Raspberry Pi, whose kernel says 7, is told by its model name.
/// `None` when the file does not say or says something unknown.
fn arm_variant_of_cpuinfo(cpuinfo: &str) -> Option<&'static str> {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_ascii_lowercase())
        })
    };
    let architecture = field("CPU architecture")?;
    if architecture == "7"
        && field("model name").is_some_and(|model| model.starts_with("armv6-compatible"))
    {
        return Some("v6");
    }
    match architecture.as_str() {
        "8" | "aarch64" => Some("v8"),
        "7" | "7m" | "?(12)" | "?(13)" | "?(14)" | "?(15)" | "?(16)" | "?(17)" => Some("v7"),
        "6" | "6tej" => Some("v6"),
        "5" | "5t" | "5te" | "5tej" => Some("v5"),
        "4" | "4t" => Some("v4"),
        "3" => Some("v3"),
        _ => None,
    }
}

/// Decides which platforms a caller accepts and which it prefers.
pub trait Matcher: Send + Sync + fmt::Debug {
    /// Where `platform` ranks: `Some(0)` is the best match, larger is worse,
    /// `None` is no match.
    fn rank(&self, platform: &Platform) -> Option<usize>;

    /// True when `platform` is accepted.
    fn matches(&self, platform: &Platform) -> bool {
        self.rank(platform).is_some()
    }

    /// What is accepted, for people (error messages): `linux/amd64 (or
    /// linux/386)`. The default is the `Debug` form.
    fn describe(&self) -> String {
        format!("{self:?}")
    }
}

impl<M: Matcher + ?Sized> Matcher for &M {
    fn rank(&self, platform: &Platform) -> Option<usize> {
        (**self).rank(platform)
    }

    // Forwarded, not left to the default: a matcher may accept platforms
    // it does not rank.
    fn matches(&self, platform: &Platform) -> bool {
        (**self).matches(platform)
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}

impl<M: Matcher + ?Sized> Matcher for std::sync::Arc<M> {
    fn rank(&self, platform: &Platform) -> Option<usize> {
        (**self).rank(platform)
    }

    fn matches(&self, platform: &Platform) -> bool {
        (**self).matches(platform)
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}

impl<M: Matcher + ?Sized> Matcher for Box<M> {
    fn rank(&self, platform: &Platform) -> Option<usize> {
        (**self).rank(platform)
    }

    fn matches(&self, platform: &Platform) -> bool {
        (**self).matches(platform)
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Accepts the listed platforms, preferring earlier ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ordered {
    platforms: Vec<Platform>,
}

impl Ordered {
    /// Accepts `platforms` (normalised), best first.
    pub fn new(platforms: Vec<Platform>) -> Self {
        Ordered { platforms }
    }

    /// The accepted platforms, best first.
    pub fn platforms(&self) -> &[Platform] {
        &self.platforms
    }
}

impl Matcher for Ordered {
    fn rank(&self, platform: &Platform) -> Option<usize> {
        self.platforms.iter().position(|p| p == platform)
    }

    fn describe(&self) -> String {
        match self.platforms.split_first() {
            None => "no platform".into(),
            Some((first, [])) => first.to_string(),
            Some((first, rest)) => {
                let rest: Vec<_> = rest.iter().map(Platform::to_string).collect();
                format!("{first} (or {})", rest.join(", "))
            }
        }
    }
}

/// Accepts every platform, all equal.
#[derive(Debug, Clone, Copy, Default)]
pub struct All;

impl Matcher for All {
    fn rank(&self, _: &Platform) -> Option<usize> {
        Some(0)
    }

    fn describe(&self) -> String {
        "any platform".into()
    }
}

/// Accepts `platform` and what it can also run, best first: arm64 runs its
/// lower arm64 variants (containerd's table), then `arm/v8` down to
/// `arm/v5`; `arm/vN` runs older arm variants down to `v5`; `amd64/vN` runs
/// older levels, then `386`.
pub fn only(platform: &Platform) -> Ordered {
    Ordered::new(compatible(platform))
}

/// Accepts exactly `platform`.
pub fn only_strict(platform: &Platform) -> Ordered {
    Ordered::new(vec![platform.clone()])
}

/// Accepts every platform.
pub fn all() -> All {
    All
}

/// Accepts every platform of `platform`'s operating system, the exact
/// architecture and variant first (containerd's `OnlyOS`).
pub fn only_os(platform: &Platform) -> OnlyOs {
    OnlyOs(platform.clone())
}

/// See [`only_os`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlyOs(Platform);

impl Matcher for OnlyOs {
    fn rank(&self, platform: &Platform) -> Option<usize> {
        if platform.os != self.0.os {
            None
        } else if *platform == self.0 {
            Some(0)
        } else {
            Some(1)
        }
    }

    fn describe(&self) -> String {
        format!("{} (any architecture)", self.0.os)
    }
}

/// The (major, highest minor) pairs an arm64 variant can run, best first.
fn arm64_ranges(variant: &str) -> Option<Vec<(u32, u32)>> {
    let v = variant.strip_prefix('v')?;
    let (major, minor) = match v.split_once('.') {
        Some((major, minor)) => (major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?),
        None => (v.parse::<u32>().ok()?, 0),
    };
    match (major, minor) {
        (8, minor @ 0..=9) => Some(vec![(8, minor)]),
        (9, minor @ 0..=7) => Some(vec![(9, minor), (8, (minor + 5).min(9))]),
        _ => None,
    }
}

fn variant_number(variant: &Option<String>) -> Option<u32> {
    variant.as_deref()?.strip_prefix('v')?.parse().ok()
}

fn compatible(platform: &Platform) -> Vec<Platform> {
    let mut out = vec![platform.clone()];
    let with = |arch: &str, variant: Option<String>| Platform {
        os: platform.os.clone(),
        architecture: arch.to_string(),
        variant,
    };
    match platform.architecture.as_str() {
        "amd64" => {
            let level = variant_number(&platform.variant).unwrap_or(1);
            for lower in (2..level).rev() {
                out.push(with("amd64", Some(format!("v{lower}"))));
            }
            if level > 1 {
                out.push(with("amd64", None));
            }
            out.push(with("386", None));
        }
        "arm" => {
            if let Some(version) = variant_number(&platform.variant) {
                for lower in (5..version).rev() {
                    out.push(with("arm", Some(format!("v{lower}"))));
                }
            }
        }
        "arm64" => {
            // containerd's table: a v9.x core also runs v8 up to a paired minor.
            out.truncate(0);
            let variant = platform.variant.as_deref().unwrap_or("v8");
            let Some(ranges) = arm64_ranges(variant) else {
                // A variant containerd does not know: itself only.
                return vec![platform.clone()];
            };
            for (major, max_minor) in ranges {
                for minor in (0..=max_minor).rev() {
                    let v = if minor == 0 {
                        format!("v{major}")
                    } else {
                        format!("v{major}.{minor}")
                    };
                    out.push(with("arm64", Some(v)));
                }
            }
            for lower in (5..=8).rev() {
                out.push(with("arm", Some(format!("v{lower}"))));
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// A matcher that accepts every platform but ranks none.
    #[derive(Debug)]
    struct AcceptsUnranked;

    impl Matcher for AcceptsUnranked {
        fn rank(&self, _: &Platform) -> Option<usize> {
            None
        }

        fn matches(&self, _: &Platform) -> bool {
            true
        }
    }

    /// A matcher behind a reference, an `Arc` or a `Box` accepts what it
    /// accepts itself, not only what it ranks.
    #[test]
    fn wrapped_matchers_keep_their_own_matches() {
        let platform = p("linux/amd64");
        let arc: std::sync::Arc<dyn Matcher> = std::sync::Arc::new(AcceptsUnranked);
        let boxed: Box<dyn Matcher> = Box::new(AcceptsUnranked);
        assert!(arc.matches(&platform));
        assert!(boxed.matches(&platform));
        let by_reference: &dyn Matcher = &AcceptsUnranked;
        assert!(Matcher::matches(&by_reference, &platform));
    }

    /// Errors name platforms as people write them, not as Rust prints them.
    #[test]
    fn matchers_describe_what_they_accept() {
        assert_eq!(only_strict(&p("linux/s390x")).describe(), "linux/s390x");
        assert_eq!(
            only(&p("linux/amd64")).describe(),
            "linux/amd64 (or linux/386)"
        );
        assert_eq!(
            std::sync::Arc::new(only(&p("linux/arm/v6"))).describe(),
            "linux/arm/v6 (or linux/arm/v5)"
        );
        assert_eq!(all().describe(), "any platform");
        assert_eq!(
            only_os(&p("windows/amd64")).describe(),
            "windows (any architecture)"
        );
    }

    #[test]
    fn parse_normalises_and_formats() {
        let cases = [
            ("linux/amd64", "linux/amd64"),
            ("Linux/x86_64", "linux/amd64"),
            ("linux/x86-64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/i386", "linux/386"),
            ("linux/aarch64", "linux/arm64/v8"),
            ("linux/arm64", "linux/arm64/v8"),
            ("linux/arm64/v8", "linux/arm64/v8"),
            ("linux/arm64/8", "linux/arm64/v8"),
            ("linux/arm64/v9.0", "linux/arm64/v9"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/arm/v6", "linux/arm/v6"),
            ("linux/arm/5", "linux/arm/v5"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("macOS/arm64", "darwin/arm64/v8"),
            ("windows/amd64", "windows/amd64"),
            ("linux/ppc64le", "linux/ppc64le"),
            ("linux/s390x", "linux/s390x"),
        ];
        for (input, want) in cases {
            assert_eq!(p(input).to_string(), want, "{input}");
            assert_eq!(p(want), p(input), "formatting round-trips for {input}");
        }
    }

    #[test]
    fn one_part_is_an_os_or_an_architecture() {
        let host = Platform::host();
        let linux = p("linux");
        assert_eq!(
            (linux.os.as_str(), &linux.architecture),
            ("linux", &host.architecture)
        );
        let arm = p("aarch64");
        assert_eq!(
            (arm.os.as_str(), arm.architecture.as_str()),
            (host.os.as_str(), "arm64")
        );
        let err = "plan10".parse::<Platform>().unwrap_err();
        assert!(err.to_string().contains("plan10"), "{err}");
    }

    #[test]
    fn malformed_specifiers_are_invalid() {
        for bad in [
            "",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux/*",
            "linux/am d64",
            &"x".repeat(65),
        ] {
            let err = bad.parse::<Platform>().unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{bad:?}");
        }
    }

    /// `/proc/cpuinfo` of a Raspberry Pi Zero W (ARMv6, whose kernel says
    /// architecture 7), a Pi 2 (ARMv7), a 32-bit ARMv8 board, and an x86 one.
    #[test]
    fn an_arm_hosts_variant_is_read_from_its_cpuinfo() {
        let pi_zero = "processor\t: 0\nmodel name\t: ARMv6-compatible processor rev 7 (v6l)\n\
                       BogoMIPS\t: 697.95\nFeatures\t: half thumb fastmult vfp edsp java tls\n\
                       CPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\n\
                       CPU part\t: 0xb76\nCPU revision\t: 7\n\nHardware\t: BCM2835\n";
        assert_eq!(arm_variant_of_cpuinfo(pi_zero), Some("v6"));
        let pi_2 = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 5 (v7l)\n\
                    CPU architecture: 7\nCPU part\t: 0xc07\n";
        assert_eq!(arm_variant_of_cpuinfo(pi_2), Some("v7"));
        let armv8 = "processor\t: 0\nmodel name\t: ARMv8 Processor rev 4 (v8l)\n\
                     CPU architecture: 8\n";
        assert_eq!(arm_variant_of_cpuinfo(armv8), Some("v8"));
        let arm926 = "Processor\t: ARM926EJ-S rev 5 (v5l)\nCPU architecture: 5TEJ\n";
        assert_eq!(arm_variant_of_cpuinfo(arm926), Some("v5"));
        let x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)\n";
        assert_eq!(arm_variant_of_cpuinfo(x86), None);
        assert_eq!(arm_variant_of_cpuinfo("CPU architecture: 99\n"), None);
        // What each becomes as a platform, and what it then accepts.
        let pi_zero = Platform::new("linux", "arm", arm_variant_of_cpuinfo(pi_zero));
        assert_eq!(pi_zero.to_string(), "linux/arm/v6");
        assert!(!only(&pi_zero).matches(&p("linux/arm/v7")));
        assert!(only(&pi_zero).matches(&p("linux/arm/v5")));
        assert_eq!(
            Platform::new("linux", "arm", None).to_string(),
            "linux/arm/v7"
        );
    }

    #[test]
    fn host_is_normalised() {
        let host = Platform::host();
        assert_eq!(p(&host.to_string()), host);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.to_string(), format!("{}/amd64", std::env::consts::OS));
        }
    }

    #[test]
    fn arm64_ranks_its_own_variant_first_then_arm_newest_first() {
        let m = only(&p("linux/arm64"));
        let order: Vec<String> = m.platforms().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            order,
            [
                "linux/arm64/v8",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5"
            ]
        );
        assert!(m.matches(&p("linux/aarch64")));
        assert!(!m.matches(&p("linux/amd64")));
        assert!(!m.matches(&p("windows/arm64")));
    }

    #[test]
    fn arm_accepts_older_variants_only() {
        let m = only(&p("linux/arm/v7"));
        assert!(m.matches(&p("linux/arm/v6")) && m.matches(&p("linux/arm/v5")));
        assert!(!m.matches(&p("linux/arm/v8")));
        assert!(!m.matches(&p("linux/arm64")));
        assert!(m.rank(&p("linux/arm")) < m.rank(&p("linux/arm/v6")));
    }

    #[test]
    fn amd64_levels_fall_back_to_386() {
        let m = only(&p("linux/amd64/v3"));
        let order: Vec<String> = m.platforms().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            order,
            [
                "linux/amd64/v3",
                "linux/amd64/v2",
                "linux/amd64",
                "linux/386"
            ]
        );
        let plain = only(&p("linux/amd64"));
        assert!(plain.matches(&p("linux/386")));
        assert!(
            !plain.matches(&p("linux/amd64/v2")),
            "a v1 host cannot run v2"
        );
    }

    #[test]
    fn strict_and_all() {
        let strict = only_strict(&p("linux/arm64"));
        assert!(strict.matches(&p("linux/arm64/v8")));
        assert!(!strict.matches(&p("linux/arm/v7")));
        assert!(all().matches(&p("plan9/386")));
    }
}
