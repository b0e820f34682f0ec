//! The conformance suite every [`ImageStore`] must pass (feature `testsuite`).
//!
//! containerd's metadata image-store tables (`TestImagesList`,
//! `TestImagesCreateUpdateDelete` with its `DeleteTarget` column), and what
//! containerd's store does that those tables leave out: empty values remove
//! a key, labels are limited to 4096 bytes, dotted annotation keys and
//! `!=""` in filters, and the error kinds of each method. Each case is a
//! plain `pub async fn` that panics on failure; give each a fresh, empty
//! store:
//!
//! ```no_run
//! # async fn example() {
//! use ocidist_images::{DbImageStore, testsuite};
//! let dir = tempfile::tempdir().unwrap();
//! testsuite::list(&DbImageStore::open(dir.path().join("images.redb")).unwrap()).await;
//! # }
//! ```
//!
//! or let [`image_store_suite!`](crate::image_store_suite) write one
//! `#[tokio::test]` per case from a function that makes a store.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use oci_spec::image::{Descriptor, MediaType};
use ocidist_content::{Labels, sha256_of};

use crate::{ErrorKind, Image, ImageStore};

/// Writes one `#[tokio::test]` per suite case, each with a fresh store from
/// `$make`: an expression giving `(guard, store)`, where `guard` lives as long
/// as the test (a temporary directory, say).
///
/// ```ignore
/// fn make_store() -> (tempfile::TempDir, DbImageStore) { ... }
/// ocidist_images::image_store_suite!(make_store());
/// ```
///
/// The calling crate needs `tokio` with the features `macros` and
/// `rt-multi-thread` (as a dev-dependency, for tests).
#[macro_export]
macro_rules! image_store_suite {
    ($make:expr) => {
        $crate::image_store_suite!(@cases $make;
            list, create_update_delete, delete_if_target, empty_values, label_limits,
            filters, errors);
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (_guard, store) = $make;
                $crate::testsuite::$case(&store).await;
            }
        )*
    };
}

/// A target descriptor of `size` bytes whose digest is that of `seed`.
fn target(size: u64, media_type: &str, seed: &str, annotations: &[(&str, &str)]) -> Descriptor {
    let mut desc = Descriptor::new(
        MediaType::from(media_type),
        size,
        sha256_of(seed.as_bytes()),
    );
    if !annotations.is_empty() {
        desc.set_annotations(Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        ));
    }
    desc
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn names(images: Vec<Image>) -> Vec<String> {
    images.into_iter().map(|i| i.name).collect()
}

const BLAB: &str = "application/vnd.oci.blab";

/// containerd's `TestImagesList`: four images, listed by each filter, in name
/// order; then each deleted, and deleted again (NotFound).
pub async fn list(store: &impl ImageStore) {
    for i in 0..4 {
        let name = format!("image-{i}");
        let mut image = Image::new(
            &name,
            target(
                10,
                "application/vnd.containerd.test",
                &name,
                &[("foo", "bar")],
            ),
        );
        let even = if i % 2 == 0 { "true" } else { "false" };
        let odd = if i % 2 == 1 { "true" } else { "false" };
        image.labels = labels(&[("namelabel", &name), ("even", even), ("odd", odd)]);
        let before = SystemTime::now();
        let created = store.create(image.clone()).await.unwrap();
        assert!(created.created_at == created.updated_at && created.updated_at >= before);
        assert_eq!(
            (created.name, created.target, created.labels),
            (image.name, image.target, image.labels)
        );
    }
    let cases: [(&[&str], &[&str]); 7] = [
        (&[], &["image-0", "image-1", "image-2", "image-3"]),
        (
            &["target.mediatype~=application/vnd.*"],
            &["image-0", "image-1", "image-2", "image-3"],
        ),
        (
            &["labels.even==true", "labels.odd==true"],
            &["image-0", "image-1", "image-2", "image-3"],
        ),
        (&["labels.even==true"], &["image-0", "image-2"]),
        (&["labels.odd==true"], &["image-1", "image-3"]),
        (&["name==image-0"], &["image-0"]),
        (
            &["labels.namelabel==image-0,labels.even==true"],
            &["image-0"],
        ),
    ];
    for (filters, want) in cases {
        assert_eq!(
            names(store.list(filters).await.unwrap()),
            want,
            "{filters:?}"
        );
    }
    assert_eq!(
        store.list(&["annotations.foo==bar"]).await.unwrap().len(),
        4
    );
    for i in 0..4 {
        let name = format!("image-{i}");
        store.delete(&name).await.unwrap();
        assert_eq!(
            store.delete(&name).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
    assert!(store.list(&[]).await.unwrap().is_empty());
}

/// containerd's `TestImagesCreateUpdateDelete`: each fieldpath rule of an
/// update, the timestamps it keeps and moves, and the invalid targets.
pub async fn create_update_delete(store: &impl ImageStore) {
    let base_labels = labels(&[("foo", "bar"), ("baz", "boo")]);
    let base_target = |name: &str| {
        target(
            10,
            BLAB,
            &format!("{name}-10"),
            &[("foo", "bar"), ("baz", "boo")],
        )
    };
    struct Case {
        name: &'static str,
        input_labels: Labels,
        input_target: Descriptor,
        fieldpaths: &'static [&'static str],
        want: Result<(Labels, Descriptor), ErrorKind>,
    }
    let cases = vec![
        Case {
            name: "Touch",
            input_labels: base_labels.clone(),
            input_target: target(10, BLAB, "Touch-10", &[("foo", "bar")]),
            fieldpaths: &[],
            want: Ok((
                base_labels.clone(),
                target(10, BLAB, "Touch-10", &[("foo", "bar")]),
            )),
        },
        Case {
            name: "ReplaceLabels",
            input_labels: labels(&[("for", "bar"), ("boo", "boo")]),
            input_target: target(10, BLAB, "ReplaceLabels-10", &[("foo", "bar")]),
            fieldpaths: &[],
            want: Ok((
                labels(&[("for", "bar"), ("boo", "boo")]),
                target(10, BLAB, "ReplaceLabels-10", &[("foo", "bar")]),
            )),
        },
        Case {
            name: "ReplaceLabelsFieldPath",
            input_labels: labels(&[("for", "bar"), ("boo", "boo")]),
            input_target: target(
                10,
                "application/vnd.oci.blab+ignored",
                "ReplaceLabelsFieldPath-10",
                &[("not", "bar"), ("new", "boo")],
            ),
            fieldpaths: &["labels"],
            want: Ok((
                labels(&[("for", "bar"), ("boo", "boo")]),
                base_target("ReplaceLabelsFieldPath"),
            )),
        },
        Case {
            name: "ReplaceLabelsAnnotationsFieldPath",
            input_labels: labels(&[("for", "bar"), ("boo", "boo")]),
            input_target: target(
                10,
                "application/vnd.oci.blab+ignored",
                "x",
                &[("foo", "boo")],
            ),
            fieldpaths: &["annotations", "labels"],
            want: Ok((
                labels(&[("for", "bar"), ("boo", "boo")]),
                target(
                    10,
                    BLAB,
                    "ReplaceLabelsAnnotationsFieldPath-10",
                    &[("foo", "boo")],
                ),
            )),
        },
        Case {
            name: "ReplaceLabel",
            input_labels: labels(&[("foo", "baz"), ("baz", "bunk")]),
            input_target: target(
                10,
                "application/vnd.oci.blab+ignored",
                "x",
                &[("foo", "bar")],
            ),
            fieldpaths: &["labels.foo"],
            want: Ok((
                labels(&[("foo", "baz"), ("baz", "boo")]),
                base_target("ReplaceLabel"),
            )),
        },
        Case {
            name: "ReplaceAnnotation",
            input_labels: labels(&[("foo", "baz"), ("baz", "bunk")]),
            input_target: target(
                10,
                "application/vnd.oci.blab+ignored",
                "x",
                &[("foo", "baz"), ("baz", "bunk")],
            ),
            fieldpaths: &["annotations.foo"],
            want: Ok((
                base_labels.clone(),
                target(
                    10,
                    BLAB,
                    "ReplaceAnnotation-10",
                    &[("foo", "baz"), ("baz", "boo")],
                ),
            )),
        },
        Case {
            name: "ReplaceTargetFieldpath",
            input_labels: Labels::new(),
            input_target: target(
                20,
                "application/vnd.oci.blab+replaced",
                "ReplaceTargetFieldpath-20",
                &[("fox", "dog")],
            ),
            fieldpaths: &["target"],
            want: Ok((
                base_labels.clone(),
                target(
                    20,
                    "application/vnd.oci.blab+replaced",
                    "ReplaceTargetFieldpath-20",
                    &[("fox", "dog")],
                ),
            )),
        },
        Case {
            name: "ReplaceTarget",
            input_labels: Labels::new(),
            input_target: target(
                20,
                "application/vnd.oci.blab+replaced",
                "ReplaceTarget-20",
                &[("fox", "dog")],
            ),
            fieldpaths: &[],
            want: Ok((
                Labels::new(),
                target(
                    20,
                    "application/vnd.oci.blab+replaced",
                    "ReplaceTarget-20",
                    &[("fox", "dog")],
                ),
            )),
        },
        Case {
            name: "ReplaceTargetTypeAndAnnotations",
            input_labels: Labels::new(),
            input_target: target(
                10,
                "application/vnd.oci.blab+replaced",
                "ReplaceTargetTypeAndAnnotations-10",
                &[("fox", "dog")],
            ),
            fieldpaths: &["target"],
            want: Ok((
                base_labels.clone(),
                target(
                    10,
                    "application/vnd.oci.blab+replaced",
                    "ReplaceTargetTypeAndAnnotations-10",
                    &[("fox", "dog")],
                ),
            )),
        },
        Case {
            name: "EmptySize",
            input_labels: base_labels.clone(),
            input_target: target(0, BLAB, "EmptySize-0", &[("foo", "bar")]),
            fieldpaths: &[],
            want: Err(ErrorKind::InvalidArgument),
        },
        Case {
            name: "EmptyMediaType",
            input_labels: base_labels.clone(),
            input_target: target(10, "", "EmptyMediaType-10", &[]),
            fieldpaths: &[],
            want: Err(ErrorKind::InvalidArgument),
        },
    ];
    for case in cases {
        let mut original = Image::new(case.name, base_target(case.name));
        original.labels = base_labels.clone();
        let created = store.create(original.clone()).await.unwrap();
        // Timestamps must move on update, whatever the clock's resolution.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut input = Image::new(case.name, case.input_target);
        input.labels = case.input_labels;
        match (store.update(input, case.fieldpaths).await, case.want) {
            (Ok(updated), Ok((want_labels, want_target))) => {
                assert_eq!(updated.labels, want_labels, "{}", case.name);
                assert_eq!(updated.target, want_target, "{}", case.name);
                assert!(
                    updated.updated_at > created.updated_at
                        && updated.created_at == created.created_at,
                    "{}",
                    case.name
                );
                assert_eq!(store.get(case.name).await.unwrap(), updated);
            }
            (Err(e), Err(kind)) => {
                assert_eq!(e.kind(), kind, "{}: {e:?}", case.name);
                // A refused update changes nothing.
                assert_eq!(
                    store.get(case.name).await.unwrap(),
                    created,
                    "{}",
                    case.name
                );
            }
            (got, want) => panic!("{}: got {got:?}, want {want:?}", case.name),
        }
        store.delete(case.name).await.unwrap();
    }
    // Creating without a size, without a media type, or without a name fails.
    for (what, image) in [
        (
            "EmptySizeOnCreate",
            Image::new("a", target(0, BLAB, "a", &[])),
        ),
        (
            "EmptyMediaTypeOnCreate",
            Image::new("b", target(10, "", "b", &[])),
        ),
        ("NoName", Image::new("", target(10, BLAB, "c", &[]))),
    ] {
        assert_eq!(
            store.create(image).await.unwrap_err().kind(),
            ErrorKind::InvalidArgument,
            "{what}"
        );
    }
    assert!(store.list(&[]).await.unwrap().is_empty());
}

/// containerd's `DeleteTarget`: a delete that names the target it expects
/// removes the image only while it still points there.
pub async fn delete_if_target(store: &impl ImageStore) {
    let old = target(10, BLAB, "old", &[]);
    let new = target(20, BLAB, "new", &[]);
    store
        .create(Image::new("moved", old.clone()))
        .await
        .unwrap();
    store
        .update(Image::new("moved", new.clone()), &["target"])
        .await
        .unwrap();

    let err = store
        .delete_if_target("moved", old.digest())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    assert_eq!(store.get("moved").await.unwrap().target, new, "it stays");

    store.delete_if_target("moved", new.digest()).await.unwrap();
    let err = store.get("moved").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = store
        .delete_if_target("moved", new.digest())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
}

/// An empty label or annotation value is not stored (containerd's
/// `writeMap`): at creation, and on update, where it is how a key is removed.
pub async fn empty_values(store: &impl ImageStore) {
    let mut blank = Image::new("blank", target(10, BLAB, "blank", &[("a", "")]));
    blank.labels = labels(&[("x", ""), ("y", "1")]);
    let created = store.create(blank).await.unwrap();
    assert_eq!(created.labels, labels(&[("y", "1")]));
    assert_eq!(created.target.annotations(), &None);
    assert_eq!(store.get("blank").await.unwrap(), created);
    assert!(store.list(&["labels.x"]).await.unwrap().is_empty());

    let mut full = Image::new(
        "full",
        target(10, BLAB, "full", &[("foo", "1"), ("baz", "2")]),
    );
    full.labels = labels(&[("foo", "1"), ("baz", "2")]);
    store.create(full).await.unwrap();
    let mut input = Image::new("full", target(10, BLAB, "x", &[("foo", "")]));
    input.labels = labels(&[("foo", "")]);
    let updated = store
        .update(input, &["labels.foo", "annotations.foo"])
        .await
        .unwrap();
    assert_eq!(updated.labels, labels(&[("baz", "2")]));
    assert_eq!(
        updated.target,
        target(10, BLAB, "full", &[("baz", "2")]),
        "the annotation is removed, the target otherwise kept"
    );
    assert_eq!(store.get("full").await.unwrap(), updated);
}

/// A label's key and value together may take 4096 bytes and no more, at
/// creation and on update; a refused update leaves the labels as they were.
pub async fn label_limits(store: &impl ImageStore) {
    let at_limit = "v".repeat(4096 - "key".len());
    let over_limit = "v".repeat(4097 - "key".len());

    let mut image = Image::new("limits", target(10, BLAB, "limits", &[]));
    image.labels = labels(&[("key", &over_limit)]);
    let err = store.create(image.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err:?}");
    assert_eq!(
        store.get("limits").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );

    image.labels = labels(&[("key", &at_limit)]);
    let created = store.create(image.clone()).await.unwrap();
    assert_eq!(created.labels["key"], at_limit);

    image.labels = labels(&[("key", &over_limit)]);
    for fieldpaths in [&[][..], &["labels"], &["labels.key"]] {
        let err = store.update(image.clone(), fieldpaths).await.unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidArgument,
            "{fieldpaths:?}: {err:?}"
        );
        assert_eq!(
            store.get("limits").await.unwrap(),
            created,
            "{fieldpaths:?}"
        );
    }
}

/// Filters as containerd's: a dotted annotation key, `!=""` meaning "set",
/// a regular expression, and quoted keys.
pub async fn filters(store: &impl ImageStore) {
    let ref_name = "org.opencontainers.image.ref.name";
    let mut tagged = Image::new("tagged", target(10, BLAB, "tagged", &[(ref_name, "v1")]));
    tagged.labels = labels(&[("a.b", "1"), ("set", "yes")]);
    store.create(tagged).await.unwrap();
    store
        .create(Image::new("plain", target(10, BLAB, "plain", &[])))
        .await
        .unwrap();

    let cases: [(&str, &[&str]); 9] = [
        (
            "annotations.org.opencontainers.image.ref.name==v1",
            &["tagged"],
        ),
        (
            r#"annotations."org.opencontainers.image.ref.name"==v1"#,
            &["tagged"],
        ),
        ("labels.a.b==1", &["tagged"]),
        (r#"labels."a".b==1"#, &["tagged"]),
        (r#"labels.set!="""#, &["tagged"]),
        ("labels.set!=yes", &["plain"]),
        ("labels.set", &["tagged"]),
        ("name~=^pl", &["plain"]),
        ("name~=/^(plain|tagged)$/", &["plain", "tagged"]),
    ];
    for (filter, want) in cases {
        assert_eq!(
            names(store.list(&[filter]).await.unwrap()),
            want,
            "{filter}"
        );
    }
    for bad in ["name==", "name~=(", "labels.", "name=x"] {
        let err = store.list(&[bad]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}: {err:?}");
    }
}

/// The error kind of each method's refusal.
pub async fn errors(store: &impl ImageStore) {
    let image = Image::new("errors", target(10, BLAB, "errors", &[]));
    assert_eq!(
        store.get("errors").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        store.update(image.clone(), &[]).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        store.delete("errors").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let created = store.create(image.clone()).await.unwrap();
    assert_eq!(
        store.create(image.clone()).await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    for fieldpaths in [&["size"][..], &["name"], &["target.digest"]] {
        let err = store.update(image.clone(), fieldpaths).await.unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidArgument,
            "{fieldpaths:?}: {err:?}"
        );
    }
    let mut no_key = image.clone();
    no_key.labels = labels(&[("", "no key")]);
    assert_eq!(
        store.update(no_key, &[]).await.unwrap_err().kind(),
        ErrorKind::InvalidArgument,
        "an empty label key"
    );
    assert_eq!(
        store.get("errors").await.unwrap(),
        created,
        "nothing changed"
    );
    store.delete("errors").await.unwrap();
}
