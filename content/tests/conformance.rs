//! containerd's content-store suite, run against the local store, and
//! against the local store through a lease.

use ocidist_content::local::LocalStore;

fn make_store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path()).expect("open store");
    (dir, store)
}

ocidist_content::content_store_suite!(make_store());

/// The same cases through [`LeasedStore`](ocidist_content::lease::LeasedStore),
/// which wraps every writer: it must behave as the store it wraps.
mod leased {
    use ocidist_content::lease::{LeasedStore, Leases};
    use ocidist_content::local::LocalStore;

    fn make_store() -> (tempfile::TempDir, LeasedStore<LocalStore>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path().join("content")).expect("open store");
        let leases = Leases::open(dir.path().join("leases")).expect("open leases");
        let lease = futures::executor::block_on(leases.acquire()).expect("lease");
        (dir, LeasedStore::new(store, lease))
    }

    ocidist_content::content_store_suite!(make_store());
}
