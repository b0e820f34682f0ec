//! The image store: the public conformance suite, validation,
//! persistence, and two processes sharing one database.

use std::process::Command;
use std::time::SystemTime;

use oci_spec::image::{Descriptor, MediaType};
use ocidist_content::{Labels, sha256_of};
use ocidist_images::{DbImageStore, ErrorKind, Image, ImageStore};

const CHILD_DB: &str = "OCIDIST_TEST_IMAGE_DB";

fn target(seed: &str) -> Descriptor {
    Descriptor::new(MediaType::ImageIndex, 100, sha256_of(seed.as_bytes()))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn db() -> (tempfile::TempDir, DbImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = DbImageStore::open(dir.path().join("images.redb")).unwrap();
    (dir, store)
}

/// The public conformance suite (containerd's image-store tables and more).
mod suite {
    use super::db;
    ocidist_images::image_store_suite!(db());
}

#[tokio::test]
async fn create_get_update_delete() {
    let (_dir, store) = db();
    let before = SystemTime::now();
    let mut image = Image::new("docker.io/library/redis:7", target("a"));
    image.labels = labels(&[("foo", "bar"), ("baz", "boo")]);
    let created = store.create(image.clone()).await.unwrap();
    assert!(created.created_at >= before && created.created_at == created.updated_at);
    assert_eq!(store.get(&image.name).await.unwrap(), created);

    let err = store.create(image.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);

    // Touch: an update with nothing changed moves only updated_at.
    let touched = store.update(created.clone(), &[]).await.unwrap();
    assert_eq!(touched.created_at, created.created_at);
    assert!(touched.updated_at > created.updated_at);
    assert_eq!(touched.labels, created.labels);

    // Replace every label.
    let mut change = touched.clone();
    change.labels = labels(&[("for", "bar")]);
    let replaced = store.update(change.clone(), &["labels"]).await.unwrap();
    assert_eq!(replaced.labels, labels(&[("for", "bar")]));

    // One label by fieldpath: set one, remove one.
    change.labels = labels(&[("new", "1")]);
    let one = store
        .update(change.clone(), &["labels.new", "labels.for"])
        .await
        .unwrap();
    assert_eq!(one.labels, labels(&[("new", "1")]));

    // The target by fieldpath leaves the labels.
    change.target = target("b");
    change.labels = Labels::new();
    let retargeted = store.update(change.clone(), &["target"]).await.unwrap();
    assert_eq!(retargeted.target, target("b"));
    assert_eq!(retargeted.labels, labels(&[("new", "1")]));

    // No fieldpaths: target and labels replaced.
    let all = store.update(change.clone(), &[]).await.unwrap();
    assert!(all.labels.is_empty());

    let err = store.update(change.clone(), &["name"]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    store.delete(&image.name).await.unwrap();
    assert_eq!(
        store.get(&image.name).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        store.delete(&image.name).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        store.update(change, &[]).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn invalid_images_are_refused() {
    let (_dir, store) = db();
    let cases = [
        ("empty name", Image::new("", target("a"))),
        ("blank name", Image::new("  ", target("a"))),
        (
            "size zero",
            Image::new(
                "x",
                Descriptor::new(MediaType::ImageIndex, 0, sha256_of(b"a")),
            ),
        ),
        (
            "no media type",
            Image::new(
                "x",
                Descriptor::new(MediaType::Other(String::new()), 10, sha256_of(b"a")),
            ),
        ),
    ];
    for (what, image) in cases {
        let err = store.create(image).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{what}: {err}");
    }
    // An update that would make a valid image invalid is refused too.
    let image = store.create(Image::new("ok", target("a"))).await.unwrap();
    let mut broken = image.clone();
    broken.target = Descriptor::new(MediaType::ImageIndex, 0, sha256_of(b"a"));
    assert_eq!(
        store.update(broken, &["target"]).await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        store.get("ok").await.unwrap(),
        image,
        "a refused update changes nothing"
    );
    let invalid_digest: Result<oci_spec::image::Digest, _> = "sha256:xyz".parse();
    assert!(
        invalid_digest.is_err(),
        "oci-spec refuses bad digests before they reach us"
    );
}

#[tokio::test]
async fn list_filters_on_name_target_and_labels() {
    let (_dir, store) = db();
    for (name, seed, label) in [("a:1", "t1", "x"), ("b:1", "t2", "y"), ("c:1", "t1", "x")] {
        let mut image = Image::new(name, target(seed));
        image.labels = labels(&[("group", label)]);
        store.create(image).await.unwrap();
    }
    let names = |images: Vec<Image>| images.into_iter().map(|i| i.name).collect::<Vec<_>>();
    assert_eq!(names(store.list(&[]).await.unwrap()), ["a:1", "b:1", "c:1"]);
    assert_eq!(names(store.list(&["name==b:1"]).await.unwrap()), ["b:1"]);
    assert_eq!(
        names(store.list(&["labels.group==x"]).await.unwrap()),
        ["a:1", "c:1"]
    );
    let by_digest = format!("target.digest=={}", target("t2").digest());
    assert_eq!(
        names(store.list(&[by_digest.as_str()]).await.unwrap()),
        ["b:1"]
    );
    let by_type = format!("target.mediatype=={}", MediaType::ImageIndex);
    assert_eq!(store.list(&[by_type.as_str()]).await.unwrap().len(), 3);
    assert_eq!(
        names(store.list(&["name==a:1", "labels.group==y"]).await.unwrap()),
        ["a:1", "b:1"]
    );
    assert_eq!(store.list(&["name==\"\""]).await.unwrap().len(), 0);
    assert_eq!(
        names(store.list(&["name~=^[ac]:"]).await.unwrap()),
        ["a:1", "c:1"]
    );
    for bad in ["name==", "name~=(a", "name==a b"] {
        assert_eq!(
            store.list(&[bad]).await.unwrap_err().kind(),
            ErrorKind::InvalidArgument,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn images_survive_reopening_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("images.redb");
    let created = {
        let store = DbImageStore::open(&path).unwrap();
        store.create(Image::new("kept", target("k"))).await.unwrap()
    };
    let store = DbImageStore::open(&path).unwrap();
    assert_eq!(store.get("kept").await.unwrap(), created);
}

/// The child side of the two-process test; run only by it.
#[tokio::test]
#[ignore = "runs only as the child process of the two-process test"]
async fn child_process_entry() {
    let path = std::env::var(CHILD_DB).expect("only run as a child");
    let store = DbImageStore::open(path).unwrap();
    for i in 0..40 {
        store
            .create(Image::new(format!("child-{i}"), target(&format!("c{i}"))))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("images.redb");
    let store = DbImageStore::open(&path).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_process_entry",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for i in 0..40 {
        store
            .create(Image::new(format!("parent-{i}"), target(&format!("p{i}"))))
            .await
            .unwrap();
    }
    assert!(child.wait().unwrap().success(), "the child's writes failed");
    let all = store.list(&[]).await.unwrap();
    assert_eq!(all.len(), 80, "both processes' images are there");
}

/// A record this build cannot decode (written by another version) can be
/// deleted, and the store is whole again.
#[tokio::test]
async fn a_record_that_does_not_decode_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("images.redb");
    let store = DbImageStore::open(&path).unwrap();
    store
        .create(Image::new("odd:1", target("odd")))
        .await
        .unwrap();
    store
        .create(Image::new("fine:1", target("fine")))
        .await
        .unwrap();
    drop(store);
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("images");
            let mut table = txn.open_table(table).unwrap();
            table.insert("odd:1", &b"\xff not a record"[..]).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = DbImageStore::open(&path).unwrap();
    assert!(store.list(&[]).await.is_err(), "the odd record is seen");
    store.delete("odd:1").await.unwrap();
    let names: Vec<String> = store
        .list(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["fine:1"]);
    let err = store.delete("odd:1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

/// A process killed while redb created the database left a file redb
/// refuses ever after (its magic number is written last): such a file, or
/// an empty one, is made anew; a file that is something else is refused,
/// never replaced.
#[tokio::test]
async fn a_database_a_killed_creation_left_is_made_anew() {
    let dir = tempfile::tempdir().unwrap();
    let made = dir.path().join("made.redb");
    drop(DbImageStore::open(&made).unwrap());
    let mut half_made = std::fs::read(&made).unwrap();
    half_made[..9].fill(0);
    let leftovers = [
        ("no-magic.redb", half_made),
        ("zeros.redb", vec![0; 73728]),
        ("empty.redb", Vec::new()),
    ];
    for (name, bytes) in leftovers {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let store = DbImageStore::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        store.create(Image::new("a:1", target(name))).await.unwrap();
        drop(store);
        let reopened = DbImageStore::open(&path).unwrap();
        assert_eq!(reopened.get("a:1").await.unwrap().target, target(name));
    }
    let foreign = dir.path().join("foreign.redb");
    std::fs::write(&foreign, b"some file that is not a database").unwrap();
    let err = DbImageStore::open(&foreign).unwrap_err();
    assert!(err.to_string().contains("Not a redb database"), "{err}");
    assert_eq!(
        std::fs::read(&foreign).unwrap(),
        b"some file that is not a database"
    );
}

/// Threads that open one new database at once all get the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_opens_share_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("images.redb");
    let opened: Vec<DbImageStore> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| DbImageStore::open(&path).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, store) in opened.iter().enumerate() {
        store
            .create(Image::new(format!("a:{i}"), target("x")))
            .await
            .unwrap();
    }
    for store in &opened {
        assert_eq!(store.list(&[]).await.unwrap().len(), opened.len());
    }
}
