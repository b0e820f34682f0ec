//! The snapshot model's rules, for both snapshotters: one key namespace,
//! committed parents only, commit only what is active, no removal under
//! children, rebase rules, walk filters, label updates, and a 128-layer mount.

use std::path::Path;

use ocidist_snapshot::native::NativeSnapshotter;
use ocidist_snapshot::overlay::OverlaySnapshotter;
use ocidist_snapshot::{CommitOpts, ErrorKind, Info, Kind, Labels, Snapshotter, mount};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn rules<S: Snapshotter>(s: &S) {
    s.prepare("a", None, Labels::new()).await.unwrap();
    let err = s.prepare("a", None, Labels::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let err = s.prepare("b", Some("a"), Labels::new()).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::FailedPrecondition,
        "an active parent: {err}"
    );
    let err = s
        .prepare("b", Some("missing"), Labels::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    s.commit("base", "a", labels(&[("l1", "v1")]))
        .await
        .unwrap();
    assert_eq!(s.stat("a").await.unwrap_err().kind(), ErrorKind::NotFound);
    let base = s.stat("base").await.unwrap();
    assert_eq!((base.kind, base.parent.clone()), (Kind::Committed, None));
    assert_eq!(base.labels, labels(&[("l1", "v1")]));
    let err = s.commit("again", "base", Labels::new()).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::FailedPrecondition,
        "only active commits: {err}"
    );
    // Keys of all kinds share one namespace.
    let err = s.prepare("base", None, Labels::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");

    s.prepare("child", Some("base"), Labels::new())
        .await
        .unwrap();
    s.view("look", Some("base"), Labels::new()).await.unwrap();
    assert_eq!(s.stat("look").await.unwrap().kind, Kind::View);
    let err = s.commit("x", "look", Labels::new()).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::FailedPrecondition,
        "a view never commits: {err}"
    );
    let err = s.remove("base").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    s.commit("top", "child", Labels::new()).await.unwrap();
    assert_eq!(s.stat("top").await.unwrap().parent.as_deref(), Some("base"));

    // Walk filters over kind, parent, name and labels.
    let names = |infos: Vec<Info>| {
        let mut n: Vec<String> = infos.into_iter().map(|i| i.name).collect();
        n.sort();
        n
    };
    assert_eq!(names(s.walk(&[]).await.unwrap()), ["base", "look", "top"]);
    assert_eq!(
        names(s.walk(&["kind==committed"]).await.unwrap()),
        ["base", "top"]
    );
    assert_eq!(
        names(s.walk(&["parent==base,kind==view"]).await.unwrap()),
        ["look"]
    );
    assert_eq!(
        names(s.walk(&["labels.l1==v1", "name==look"]).await.unwrap()),
        ["base", "look"]
    );

    // Updates: all labels, or only the named ones.
    let mut info = s.stat("base").await.unwrap();
    info.labels = labels(&[("l2", "v2")]);
    let updated = s.update(info.clone(), &["labels.l2"]).await.unwrap();
    assert_eq!(updated.labels, labels(&[("l1", "v1"), ("l2", "v2")]));
    let replaced = s.update(info.clone(), &[]).await.unwrap();
    assert_eq!(replaced.labels, labels(&[("l2", "v2")]));
    let err = s.update(info, &["parent"]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    s.remove("look").await.unwrap();
    s.remove("top").await.unwrap();
    s.remove("base").await.unwrap();
    assert!(s.walk(&[]).await.unwrap().is_empty());
    s.close().await.unwrap();
    s.close().await.unwrap();
    assert!(s.stat("x").await.is_err(), "closed");
}

#[tokio::test]
async fn native_follows_the_snapshot_rules() {
    let dir = tempfile::tempdir().unwrap();
    rules(&NativeSnapshotter::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn overlay_follows_the_snapshot_rules() {
    let dir = tempfile::tempdir().unwrap();
    rules(&OverlaySnapshotter::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn a_parent_at_commit_only_when_none_was_set_at_prepare() {
    let dir = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(dir.path()).unwrap();
    s.prepare("a", None, Labels::new()).await.unwrap();
    s.commit("base", "a", Labels::new()).await.unwrap();
    s.prepare("b", None, Labels::new()).await.unwrap();
    let onto_base = CommitOpts {
        labels: Labels::new(),
        parent: Some("base".into()),
    };
    s.commit_with("layer", "b", onto_base.clone())
        .await
        .unwrap();
    assert_eq!(
        s.stat("layer").await.unwrap().parent.as_deref(),
        Some("base")
    );
    s.prepare("c", Some("layer"), Labels::new()).await.unwrap();
    let err = s
        .commit_with("c2", "c", onto_base.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");

    let native_dir = tempfile::tempdir().unwrap();
    let n = NativeSnapshotter::open(native_dir.path()).unwrap();
    n.prepare("a", None, Labels::new()).await.unwrap();
    n.commit("base", "a", Labels::new()).await.unwrap();
    n.prepare("b", None, Labels::new()).await.unwrap();
    let err = n.commit_with("layer", "b", onto_base).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unimplemented, "{err}");
}

struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = mount::unmount(self.0);
    }
}

#[tokio::test]
async fn one_hundred_twenty_eight_overlay_layers_mount() {
    let dir = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(dir.path()).unwrap();
    let mut parent: Option<String> = None;
    for i in 0..128 {
        let key = format!("active-{i}");
        let mounts = s
            .prepare(&key, parent.as_deref(), Labels::new())
            .await
            .unwrap();
        let target = ocidist_snapshot::mount::ApplyTarget::from_mounts(&mounts).unwrap();
        let upper = match target {
            ocidist_snapshot::mount::ApplyTarget::Tree(p) => p,
            ocidist_snapshot::mount::ApplyTarget::OverlayUpper { upper, .. } => upper,
        };
        std::fs::write(upper.join(format!("layer-{i}")), i.to_string()).unwrap();
        let name = format!("layer-{i}");
        s.commit(&name, &key, Labels::new()).await.unwrap();
        parent = Some(name);
    }
    let mounts = s
        .view("top", parent.as_deref(), Labels::new())
        .await
        .unwrap();
    let longest: usize = mounts[0].options.iter().map(String::len).sum();
    assert!(
        longest > 4096,
        "the options are longer than a page: {longest}"
    );
    let target = tempfile::tempdir().unwrap();
    mount::mount_all(&mounts, target.path()).unwrap();
    let _guard = Mounted(target.path());
    for i in 0..128 {
        assert_eq!(
            std::fs::read_to_string(target.path().join(format!("layer-{i}"))).unwrap(),
            i.to_string()
        );
    }
}
