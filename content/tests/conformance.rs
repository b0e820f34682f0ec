//! containerd's content-store suite, run against the local store.

use ocidist_content::local::LocalStore;

fn make_store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path()).expect("open store");
    (dir, store)
}

ocidist_content::content_store_suite!(make_store());
