//! containerd's snapshotter suite, run against both snapshotters. The cases
//! mount snapshots (and chown to uid 1), so they need root.

mod native {
    use ocidist_snapshot::native::NativeSnapshotter;

    fn make_snapshotter() -> (tempfile::TempDir, NativeSnapshotter) {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshotter =
            ocidist_snapshot::native::NativeSnapshotter::open(dir.path()).expect("open native");
        (dir, snapshotter)
    }

    ocidist_snapshot::snapshotter_suite!(make_snapshotter());
}

mod overlay {
    use ocidist_snapshot::overlay::OverlaySnapshotter;

    fn make_snapshotter() -> (tempfile::TempDir, OverlaySnapshotter) {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshotter =
            ocidist_snapshot::overlay::OverlaySnapshotter::open(dir.path()).expect("open overlay");
        (dir, snapshotter)
    }

    ocidist_snapshot::snapshotter_suite!(make_snapshotter());
}

/// A case run without root fails, saying what it needs, instead of failing
/// later at a mount with EPERM or passing in silence. Checked on a thread
/// whose effective uid alone is dropped (Linux keeps credentials per
/// thread; the raw call changes only this one), which gets root back as it
/// ends.
#[test]
fn the_suite_refuses_to_run_without_root_and_says_why() {
    use rustix::process::{Uid, getuid};
    ocidist_snapshot::testsuite::require_root();
    assert!(getuid().is_root(), "this check itself runs as root");
    let said = std::thread::spawn(|| {
        let nobody = Uid::from_raw(65534);
        rustix::thread::set_thread_res_uid(Uid::ROOT, nobody, Uid::ROOT).expect("drop euid");
        let refused = std::panic::catch_unwind(ocidist_snapshot::testsuite::require_root);
        rustix::thread::set_thread_res_uid(Uid::ROOT, Uid::ROOT, Uid::ROOT).expect("get root back");
        let payload = refused.expect_err("refused without root");
        payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default()
    })
    .join()
    .unwrap();
    assert!(
        said.contains("needs root") && said.contains("uid 65534"),
        "{said}"
    );
}
