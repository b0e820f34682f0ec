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
