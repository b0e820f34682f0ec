//! Authentication against the real registry: htpasswd basic auth.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{image, push_all};
use ocidist_content::ErrorKind;
use ocidist_remotes::Resolver;
use ocidist_remotes::docker::DockerResolver;
use ocidist_remotes::docker::auth::{Credential, StaticCredentials};
use ocidist_remotes::testkit::{Registry, find_binary};

fn resolver_for(host: &str, username: &str, secret: &str) -> DockerResolver {
    let credential = Credential {
        username: username.into(),
        secret: secret.into(),
    };
    DockerResolver::new().credentials(Arc::new(StaticCredentials(HashMap::from([(
        host.to_string(),
        credential,
    )]))))
}

#[tokio::test]
async fn basic_auth_with_htpasswd() {
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("s3cret", 5).unwrap();
    std::fs::write(dir.path().join("htpasswd"), format!("alice:{hash}\n")).unwrap();
    let config = format!(
        "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
        dir.path().join("htpasswd").display()
    );
    let registry = Registry::start_binary(&find_binary().unwrap(), &config).unwrap();
    let repo = format!("{}/private/app", registry.host());
    let blobs = image(false, "linux/amd64", 5000);

    // Anonymous: refused, and the error says so.
    let anonymous = DockerResolver::new();
    let pusher = anonymous.pusher(&format!("{repo}:1")).await.unwrap();
    let err = pusher
        .push(&blobs[0].desc)
        .await
        .err()
        .expect("anonymous push refused");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("401"), "{err}");

    // With the right password: push, resolve and fetch.
    let alice = resolver_for(&registry.host(), "alice", "s3cret");
    let pusher = alice.pusher(&format!("{repo}:1")).await.unwrap();
    push_all(pusher.as_ref(), &blobs).await;
    let (_, desc) = alice.resolve(&format!("{repo}:1")).await.unwrap();
    assert_eq!(desc.digest(), blobs[2].desc.digest());

    // A wrong password is refused.
    let mallory = resolver_for(&registry.host(), "alice", "guess");
    let err = mallory.resolve(&format!("{repo}:1")).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    // Credentials for another host are never sent here.
    let elsewhere = resolver_for("other.example:5000", "alice", "s3cret");
    let err = elsewhere.resolve(&format!("{repo}:1")).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
}
