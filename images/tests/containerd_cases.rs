//! containerd's own test tables, ported: `TestValidateMediaType`, the
//! platforms package's `TestParseSelector(Invalid)`, `TestOnly`,
//! `TestOnlyStrict`, `TestOnlyOS(Less)`, the handler behaviour its source
//! specifies (LimitManifests, SetChildrenLabels). The metadata image store's
//! `TestImagesList` and `TestImagesCreateUpdateDelete` are in the public
//! suite, `ocidist_images::testsuite`, which `image_store.rs` runs.
//!
//! Left out, on purpose: Windows OS versions and OS features (`windows(10.0…)`,
//! `linux(+gpu)`), which our `Platform` does not model.

mod common;

use common::{Flavor, image, put, store};
use ocidist_content::{Labels, Manager};
use ocidist_images::manifest::validate_document;
use ocidist_images::media_types::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use ocidist_images::platforms::{Matcher, Platform, only, only_os, only_strict};
use ocidist_images::wrappers::children_labels;
use ocidist_images::{ErrorKind, Flow, Handler, children_handler, limit_manifests};

fn p(s: &str) -> Platform {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn validate_media_type() {
    let manifest_doc = br#"{"schemaVersion":0,"config":{"mediaType":"","digest":"","size":1},"layers":[{"mediaType":"","digest":"","size":2}]}"#;
    let index_doc = br#"{"schemaVersion":0,"manifests":[{"mediaType":"","digest":"","size":1}]}"#;
    for (mt, is_index) in [
        (DOCKER_MANIFEST, false),
        (OCI_MANIFEST, false),
        (DOCKER_MANIFEST_LIST, true),
        (OCI_INDEX, true),
    ] {
        assert_eq!(
            validate_document(manifest_doc, mt).is_ok(),
            !is_index,
            "manifest-{mt}"
        );
        assert_eq!(
            validate_document(index_doc, mt).is_ok(),
            is_index,
            "index-{mt}"
        );
    }
    let manifests = [DOCKER_MANIFEST, OCI_MANIFEST];
    let indexes = [DOCKER_MANIFEST_LIST, OCI_INDEX];
    for (mt, valid, invalid) in [
        (DOCKER_MANIFEST, manifests, indexes),
        (OCI_MANIFEST, manifests, indexes),
        (DOCKER_MANIFEST_LIST, indexes, manifests),
        (OCI_INDEX, indexes, manifests),
    ] {
        for v in valid {
            let doc = format!(r#"{{"mediaType":"{v}"}}"#);
            assert!(
                validate_document(doc.as_bytes(), mt).is_ok(),
                "{mt} declaring {v}"
            );
        }
        for v in invalid {
            let doc = format!(r#"{{"mediaType":"{v}"}}"#);
            assert!(
                validate_document(doc.as_bytes(), mt).is_err(),
                "{mt} declaring {v}"
            );
        }
    }
    assert!(
        validate_document(br#"{"fsLayers":["1"]}"#, "").is_err(),
        "schema 1"
    );
    assert!(
        validate_document(br#"{"schemaVersion":2,"manifests":[]}"#, OCI_MANIFEST).is_err(),
        "a present key counts, even empty"
    );
}

#[test]
fn parse_selector() {
    let host = Platform::host();
    // (input, expected os/arch/variant, also matching under strict equality)
    let rows: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "linux/arm64",
            "linux/arm64/v8".into(),
            vec!["linux/aarch64", "linux/aarch64/v8", "linux/arm64/v8"],
        ),
        (
            "linux/arm64/v8",
            "linux/arm64/v8".into(),
            vec!["linux/aarch64", "linux/arm64"],
        ),
        (
            "linux/arm",
            "linux/arm/v7".into(),
            vec!["linux/arm/v7", "linux/armhf", "linux/arm/7"],
        ),
        ("linux/arm/v6", "linux/arm/v6".into(), vec!["linux/armel"]),
        (
            "linux/arm/v7",
            "linux/arm/v7".into(),
            vec!["linux/arm", "linux/armhf"],
        ),
        ("arm", format!("{}/arm/v7", host.os), vec![]),
        ("armel", format!("{}/arm/v6", host.os), vec![]),
        ("armhf", format!("{}/arm/v7", host.os), vec![]),
        ("Aarch64", format!("{}/arm64/v8", host.os), vec![]),
        ("x86_64", format!("{}/amd64", host.os), vec![]),
        ("Linux/x86_64", "linux/amd64".into(), vec![]),
        ("i386", format!("{}/386", host.os), vec![]),
        ("s390x", format!("{}/s390x", host.os), vec![]),
        ("linux/s390x", "linux/s390x".into(), vec![]),
    ];
    for (input, want, also) in rows {
        let parsed = p(input);
        assert_eq!(parsed.to_string(), want, "{input}");
        let strict = only_strict(&parsed);
        for other in also {
            assert!(strict.matches(&p(other)), "{input} matches {other}");
        }
        assert_eq!(p(&parsed.to_string()), parsed, "{input} round-trips");
    }
    for (input, os) in [
        ("linux", "linux"),
        ("macOS", "darwin"),
        ("windows", "windows"),
    ] {
        let parsed = p(input);
        assert_eq!(
            (parsed.os.as_str(), parsed.architecture.as_str()),
            (os, host.architecture.as_str()),
            "{input}"
        );
    }
}

#[test]
fn parse_selector_invalid() {
    for bad in [
        "",
        "/linux/arm",
        "linux/arm/",
        "linux /arm",
        "linux/&arm",
        "linux/arm/foo/bar",
        "*",
        "linux/*",
        "*/arm64",
    ] {
        let err = bad.parse::<Platform>().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}");
    }
}

fn check_table(matcher_for: fn(&Platform) -> Box<dyn Matcher>, table: &[(&str, &[&str], &[&str])]) {
    for (platform, yes, no) in table {
        let m = matcher_for(&p(platform));
        for x in *yes {
            assert!(m.matches(&p(x)), "{platform} should match {x}");
        }
        for x in *no {
            assert!(!m.matches(&p(x)), "{platform} should not match {x}");
        }
    }
}

const ARM_ALL: [&str; 5] = [
    "linux/arm",
    "linux/arm/v5",
    "linux/arm/v6",
    "linux/arm/v7",
    "linux/arm/v8",
];

#[test]
fn only_table() {
    let v96: Vec<String> = [
        "linux/arm64",
        "linux/arm64/v8",
        "linux/arm64/v9",
        "linux/arm64/v9.0",
    ]
    .into_iter()
    .map(String::from)
    .chain((1..=9).map(|m| format!("linux/arm64/v8.{m}")))
    .chain((1..=6).map(|m| format!("linux/arm64/v9.{m}")))
    .chain(ARM_ALL.iter().map(|s| s.to_string()))
    .collect();
    let v96: Vec<&str> = v96.iter().map(String::as_str).collect();
    let v9: Vec<String> = [
        "linux/arm64",
        "linux/arm64/v8",
        "linux/arm64/v9",
        "linux/arm64/v9.0",
    ]
    .into_iter()
    .map(String::from)
    .chain((1..=5).map(|m| format!("linux/arm64/v8.{m}")))
    .chain(ARM_ALL.iter().map(|s| s.to_string()))
    .collect();
    let v9: Vec<&str> = v9.iter().map(String::as_str).collect();
    let arm64_v81: Vec<&str> = ARM_ALL
        .iter()
        .copied()
        .chain(["linux/arm64", "linux/arm64/v8", "linux/arm64/v8.1"])
        .collect();
    let arm64: Vec<&str> = ARM_ALL
        .iter()
        .copied()
        .chain(["linux/arm64", "linux/arm64/v8"])
        .collect();
    let table: Vec<(&str, &[&str], &[&str])> = vec![
        (
            "linux/amd64",
            &["linux/amd64", "linux/386"],
            &[
                "linux/amd64/v2",
                "linux/arm/v7",
                "linux/arm64",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/amd64/v2",
            &[
                "linux/amd64",
                "linux/amd64/v1",
                "linux/amd64/v2",
                "linux/386",
            ],
            &[
                "linux/amd64/v3",
                "linux/amd64/v4",
                "linux/arm/v7",
                "linux/arm64",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/386",
            &["linux/386"],
            &[
                "linux/amd64",
                "linux/arm/v7",
                "linux/arm64",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "windows/amd64",
            &["windows/amd64"],
            &["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/arm"],
        ),
        (
            "linux/arm/v8",
            &ARM_ALL,
            &[
                "linux/amd64",
                "linux/arm/v4",
                "linux/arm64",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/arm/v7",
            &["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7"],
            &[
                "linux/amd64",
                "linux/arm/v4",
                "linux/arm/v8",
                "linux/arm64",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/arm/v6",
            &["linux/arm/v5", "linux/arm/v6"],
            &[
                "linux/amd64",
                "linux/arm",
                "linux/arm/v4",
                "linux/arm/v7",
                "linux/arm/v8",
                "linux/arm64",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/arm/v5",
            &["linux/arm/v5"],
            &[
                "linux/amd64",
                "linux/arm",
                "linux/arm/v4",
                "linux/arm/v6",
                "linux/arm/v7",
                "linux/arm/v8",
                "linux/arm64",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/arm/v4",
            &["linux/arm/v4"],
            &[
                "linux/amd64",
                "linux/arm",
                "linux/arm/v5",
                "linux/arm/v6",
                "linux/arm/v7",
                "linux/arm/v8",
                "linux/arm64",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/arm64/v9.6",
            &v96,
            &[
                "linux/amd64",
                "linux/arm/v4",
                "windows/amd64",
                "windows/arm",
                "linux/arm64/v8.10",
            ],
        ),
        (
            "linux/arm64/v9",
            &v9,
            &[
                "linux/amd64",
                "linux/arm/v4",
                "windows/amd64",
                "windows/arm",
                "linux/arm64/v8.6",
            ],
        ),
        (
            "linux/arm64/v8.1",
            &arm64_v81,
            &[
                "linux/amd64",
                "linux/arm/v4",
                "linux/arm/v9",
                "linux/arm64/v9",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/arm64",
            &arm64,
            &[
                "linux/amd64",
                "linux/arm/v4",
                "linux/arm/v9",
                "linux/arm64/v9",
                "windows/amd64",
                "windows/arm",
            ],
        ),
    ];
    check_table(|p| Box::new(only(p)), &table);
}

#[test]
fn only_strict_table() {
    let table: Vec<(&str, &[&str], &[&str])> = vec![
        (
            "linux/amd64",
            &["linux/amd64"],
            &[
                "linux/386",
                "linux/arm/v7",
                "linux/arm64",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/386",
            &["linux/386"],
            &[
                "linux/amd64",
                "linux/arm/v7",
                "linux/arm64",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "windows/amd64",
            &["windows/amd64"],
            &["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/arm"],
        ),
        (
            "linux/arm/v8",
            &["linux/arm/v8"],
            &[
                "linux/arm",
                "linux/arm/v5",
                "linux/arm/v6",
                "linux/arm/v7",
                "linux/amd64",
                "linux/arm/v4",
                "linux/arm64",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/arm/v7",
            &["linux/arm", "linux/arm/v7"],
            &[
                "linux/arm/v5",
                "linux/arm/v6",
                "linux/amd64",
                "linux/arm/v4",
                "linux/arm/v8",
                "linux/arm64",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/arm/v6",
            &["linux/arm/v6"],
            &[
                "linux/arm/v5",
                "linux/amd64",
                "linux/arm",
                "linux/arm/v4",
                "linux/arm/v7",
                "linux/arm/v8",
                "linux/arm64",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/arm/v5",
            &["linux/arm/v5"],
            &[
                "linux/amd64",
                "linux/arm",
                "linux/arm/v4",
                "linux/arm/v6",
                "linux/arm/v7",
                "linux/arm/v8",
                "linux/arm64",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/arm/v4",
            &["linux/arm/v4"],
            &[
                "linux/amd64",
                "linux/arm",
                "linux/arm/v5",
                "linux/arm/v6",
                "linux/arm/v7",
                "linux/arm/v8",
                "linux/arm64",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/arm64/v9.5",
            &["linux/arm64/v9.5"],
            &[
                "linux/arm",
                "linux/arm/v5",
                "linux/arm/v8",
                "linux/amd64",
                "linux/arm/v4",
                "linux/arm64/v8",
                "linux/arm64/v8.1",
                "linux/arm64/v9",
                "linux/arm64/v9.1",
                "linux/arm64/v9.4",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/arm64/v9",
            &["linux/arm64/v9", "linux/arm64/v9.0"],
            &[
                "linux/arm",
                "linux/arm/v8",
                "linux/amd64",
                "linux/arm/v4",
                "linux/arm/v9",
                "linux/arm64/v8",
                "linux/arm64/v8.1",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/arm64/v8.1",
            &["linux/arm64/v8.1"],
            &[
                "linux/arm",
                "linux/arm/v8",
                "linux/amd64",
                "linux/arm/v4",
                "linux/arm/v9",
                "linux/arm64/v8",
                "linux/arm64/v9",
                "windows/amd64",
                "windows/arm",
            ],
        ),
        (
            "linux/arm64",
            &["linux/arm64", "linux/arm64/v8"],
            &[
                "linux/arm",
                "linux/arm/v5",
                "linux/arm/v8",
                "linux/amd64",
                "linux/arm/v4",
                "linux/arm/v9",
                "linux/arm64/v9",
                "windows/amd64",
                "windows/arm",
            ],
        ),
    ];
    check_table(|p| Box::new(only_strict(p)), &table);
}

#[test]
fn only_os_and_its_order() {
    let m = only_os(&p("linux/amd64"));
    for yes in ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/386"] {
        assert!(m.matches(&p(yes)), "{yes}");
    }
    for no in ["windows/amd64", "darwin/arm64"] {
        assert!(!m.matches(&p(no)), "{no}");
    }
    let sorted = |platform: &str, input: &[&str]| {
        let m = only_os(&p(platform));
        let mut list: Vec<Platform> = input.iter().map(|s| p(s)).collect();
        list.sort_by_key(|x| m.rank(x).unwrap_or(usize::MAX));
        list.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(
        sorted(
            "linux/amd64",
            &["linux/arm64", "linux/386", "linux/amd64", "windows/amd64"]
        ),
        [
            "linux/amd64",
            "linux/arm64/v8",
            "linux/386",
            "windows/amd64"
        ]
    );
    assert_eq!(
        sorted(
            "linux/arm64",
            &[
                "linux/amd64",
                "linux/arm/v7",
                "linux/arm64",
                "windows/arm64"
            ]
        ),
        [
            "linux/arm64/v8",
            "linux/amd64",
            "linux/arm/v7",
            "windows/arm64/v8"
        ]
    );
    assert_eq!(
        sorted(
            "linux/amd64",
            &[
                "windows/amd64",
                "darwin/amd64",
                "linux/arm64",
                "linux/amd64"
            ]
        ),
        [
            "linux/amd64",
            "linux/arm64/v8",
            "windows/amd64",
            "darwin/amd64"
        ]
    );
}

#[tokio::test]
async fn limit_manifests_orders_cuts_and_finds_no_match() {
    let (_dir, store) = store();
    let arm64 = image(&store, Flavor::Oci, "linux/arm64", 1).await;
    let amd64 = image(&store, Flavor::Oci, "linux/amd64", 1).await;
    let i386 = image(&store, Flavor::Oci, "linux/386", 1).await;
    let idx = common::index(
        &store,
        Flavor::Oci,
        &[
            arm64.manifest.clone(),
            amd64.manifest.clone(),
            i386.manifest.clone(),
        ],
    )
    .await;
    let host = only(&p("linux/amd64"));
    let digests = |flow: Flow| match flow {
        Flow::Children(c) => c.iter().map(|d| d.digest().to_string()).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let one = limit_manifests(1, host.clone(), children_handler(store.clone()));
    assert_eq!(
        digests(one.handle(&idx).await.unwrap()),
        [amd64.manifest.digest().to_string()]
    );
    let all = limit_manifests(0, host.clone(), children_handler(store.clone()));
    assert_eq!(
        digests(all.handle(&idx).await.unwrap()),
        [
            amd64.manifest.digest(),
            i386.manifest.digest(),
            arm64.manifest.digest()
        ]
        .map(|d| d.to_string())
    );
    let empty = common::index(&store, Flavor::Oci, &[]).await;
    let err = one.handle(&empty).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn children_gc_labels_follow_containerd_names() {
    let (_dir, store) = store();
    let m1 = image(&store, Flavor::Oci, "linux/amd64", 2).await;
    let m2 = image(&store, Flavor::Docker, "linux/arm64", 1).await;
    let nested = common::index(&store, Flavor::Oci, std::slice::from_ref(&m1.manifest)).await;
    let odd = put(&store, "application/vnd.example+json", b"{}").await;
    let labels = children_labels(&[
        m1.manifest.clone(),
        m2.manifest.clone(),
        nested.clone(),
        odd.clone(),
    ]);
    let want: Labels = [
        ("containerd.io/gc.ref.content.m.0", m1.manifest.digest()),
        ("containerd.io/gc.ref.content.m.1", m2.manifest.digest()),
        ("containerd.io/gc.ref.content.0", nested.digest()),
        ("containerd.io/gc.ref.content.1", odd.digest()),
    ]
    .into_iter()
    .map(|(k, d)| (k.to_string(), d.to_string()))
    .collect();
    assert_eq!(labels, want);
    let labels = children_labels(&[
        m1.config.clone(),
        m1.layers[0].clone(),
        m1.layers[1].clone(),
        m2.config.clone(),
    ]);
    assert_eq!(
        labels["containerd.io/gc.ref.content.config"],
        m1.config.digest().to_string()
    );
    assert_eq!(
        labels["containerd.io/gc.ref.content.config1"],
        m2.config.digest().to_string()
    );
    assert_eq!(
        labels["containerd.io/gc.ref.content.l.1"],
        m1.layers[1].digest().to_string()
    );
    let _ = store.info(m1.config.digest()).await.unwrap();
}
