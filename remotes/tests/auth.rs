//! Authentication against the real registry: htpasswd basic auth, and bearer
//! tokens from the test kit's token service.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{fetch_all, image, push_all};
use ocidist_content::ErrorKind;
use ocidist_remotes::Resolver;
use ocidist_remotes::docker::DockerResolver;
use ocidist_remotes::docker::auth::{Credential, StaticCredentials};
use ocidist_remotes::docker::config::DockerConfig;
use ocidist_remotes::source::source_label_key;
use ocidist_remotes::testkit::{Fault, FaultProxy, Registry, TokenServer, find_binary};
use tokio::io::AsyncWriteExt;

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

/// The registry with htpasswd basic auth for alice (password `s3cret`).
fn htpasswd_registry() -> (tempfile::TempDir, Registry) {
    let (dir, config) = htpasswd_config();
    let registry = Registry::start_binary(&find_binary().unwrap(), &config).unwrap();
    (dir, registry)
}

/// The `auth:` section for alice (password `s3cret`), and the directory
/// holding its htpasswd file.
fn htpasswd_config() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("s3cret", 5).unwrap();
    std::fs::write(dir.path().join("htpasswd"), format!("alice:{hash}\n")).unwrap();
    let config = format!(
        "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
        dir.path().join("htpasswd").display()
    );
    (dir, config)
}

/// The registry with `auth: token`, trusting a token service that grants
/// push to bob (password `pa55`).
fn token_registry() -> (tempfile::TempDir, TokenServer, Registry) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start("bob", "pa55").unwrap();
    let registry = Registry::start_binary(
        &find_binary().unwrap(),
        &tokens.registry_config(dir.path()).unwrap(),
    )
    .unwrap();
    (dir, tokens, registry)
}

#[tokio::test]
async fn basic_auth_with_htpasswd() {
    let (_dir, registry) = htpasswd_registry();
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
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert!(err.to_string().contains("401"), "{err}");
    let host = registry.host();
    let none_found = format!("refused without credentials: none were found for {host}");
    assert!(err.to_string().contains(&none_found), "{err}");

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
    let refused = format!("refused with the credentials for {host}");
    assert!(err.to_string().contains(&refused), "{err}");

    // Credentials for another host are never sent here.
    let elsewhere = resolver_for("other.example:5000", "alice", "s3cret");
    let err = elsewhere.resolve(&format!("{repo}:1")).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    assert!(err.to_string().contains(&none_found), "{err}");

    // An empty password is not sent, and the refusal says that is why.
    let blank = resolver_for(&registry.host(), "alice", "");
    let err = blank.resolve(&format!("{repo}:1")).await.unwrap_err();
    let empty = format!(
        "refused without credentials: those found for {host} have an empty password, which is not sent"
    );
    assert!(err.to_string().contains(&empty), "{err}");
}

/// Credentials from a function of the host (a runtime's own secret
/// store): it is asked for the registry's host, what it gives is used, and
/// its error fails the request, saying why.
#[tokio::test]
async fn credentials_from_a_function_of_the_host() {
    use ocidist_remotes::docker::auth::{CredentialsError, credentials_fn};
    let (_dir, registry) = htpasswd_registry();
    let repo = format!("{}/private/fn", registry.host());
    let blobs = image(false, "linux/amd64", 3000);
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    let resolver = DockerResolver::new().credentials(credentials_fn(move |host| {
        seen.lock().unwrap().push(host.to_string());
        Ok(Some(Credential {
            username: "alice".into(),
            secret: "s3cret".into(),
        }))
    }));
    let pusher = resolver.pusher(&format!("{repo}:1")).await.unwrap();
    push_all(pusher.as_ref(), &blobs).await;
    let (_, desc) = resolver.resolve(&format!("{repo}:1")).await.unwrap();
    assert_eq!(desc.digest(), blobs[2].desc.digest());
    let asked = asked.lock().unwrap().clone();
    assert!(!asked.is_empty(), "the function was asked");
    assert!(
        asked.iter().all(|h| *h == registry.host()),
        "asked only for the registry's host: {asked:?}"
    );

    let failing = DockerResolver::new().credentials(credentials_fn(|_| {
        Err(CredentialsError::with_source(
            "read the vault",
            std::io::Error::other("the vault is sealed"),
        ))
    }));
    let err = failing
        .resolve(&format!("{repo}:1"))
        .await
        .expect_err("no credentials, no access");
    assert!(
        ocidist_content::Report::new(&err)
            .to_string()
            .contains(&format!(
                "credentials for {}: read the vault: the vault is sealed",
                registry.host()
            )),
        "{err}"
    );
    // Typed, and the store's own error is there to downcast.
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    let ocidist_remotes::Error::Credentials { host, source } = err.deciding() else {
        panic!("not a credentials error: {err:?}");
    };
    assert_eq!(host, &registry.host());
    let cause = std::error::Error::source(source).and_then(|c| c.downcast_ref::<std::io::Error>());
    assert_eq!(
        cause.map(|c| c.to_string()).as_deref(),
        Some("the vault is sealed")
    );
}

/// A credential helper is a process and may take its time (a keychain
/// prompt, a cloud login): the runtime that asked goes on with its other
/// work meanwhile, even a single-threaded one.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_credential_helper_does_not_hold_up_the_runtime() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (_dir, registry) = htpasswd_registry();
    let repo = format!("{}/private/app", registry.host());
    let blobs = image(false, "linux/amd64", 5000);
    let alice = resolver_for(&registry.host(), "alice", "s3cret");
    push_all(
        alice.pusher(&format!("{repo}:1")).await.unwrap().as_ref(),
        &blobs,
    )
    .await;

    let helpers = tempfile::tempdir().unwrap();
    let helper = helpers.path().join("docker-credential-slow");
    std::fs::write(
        &helper,
        "#!/bin/sh\nread server\nsleep 2\necho '{\"Username\":\"alice\",\"Secret\":\"s3cret\"}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = DockerConfig::parse(br#"{"credsStore": "slow"}"#)
        .unwrap()
        .helper_dir(helpers.path());
    let resolver = DockerResolver::new().credentials(Arc::new(config));

    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let started = std::time::Instant::now();
    let (_, desc) = resolver.resolve(&format!("{repo}:1")).await.unwrap();
    let took = started.elapsed();
    ticker.abort();
    assert_eq!(desc.digest(), blobs[2].desc.digest());
    assert!(
        took >= std::time::Duration::from_secs(2),
        "the helper was asked"
    );
    // Blocked, the only thread would have ticked a few times at most; a
    // free one ticks about a hundred times, fewer on a loaded machine.
    let ticks = ticks.load(Ordering::Relaxed);
    assert!(
        ticks >= 20,
        "{ticks} ticks of 20 ms while resolving took {took:?}"
    );
}

#[tokio::test]
async fn bearer_tokens_from_a_token_service() {
    let (_dir, tokens, registry) = token_registry();
    let repo = format!("{}/tokens/app", registry.host());
    let blobs = image(false, "linux/arm64", 50_000);

    // Anonymous tokens grant pull only: a push is refused.
    let anonymous = DockerResolver::new();
    assert_push_refused(&anonymous, &format!("{repo}:1"), &blobs[0], false).await;

    // With credentials: push, then pull back, one token per scope.
    let bob = resolver_for(&registry.host(), "bob", "pa55");
    let pusher = bob.pusher(&format!("{repo}:1")).await.unwrap();
    let before = tokens.requests();
    push_all(pusher.as_ref(), &blobs).await;
    assert_eq!(
        tokens.requests() - before,
        1,
        "one token (pull and push) serves the existence checks and the uploads"
    );
    let before = tokens.requests();
    let (_, desc) = bob.resolve(&format!("{repo}:1")).await.unwrap();
    assert_eq!(desc.digest(), blobs[2].desc.digest());
    let fetcher = bob.fetcher(&format!("{repo}:1")).await.unwrap();
    for blob in &blobs {
        let chunks: Vec<bytes::Bytes> =
            futures::TryStreamExt::try_collect(fetcher.fetch(&blob.desc, 0).await.unwrap())
                .await
                .unwrap();
        assert_eq!(chunks.concat(), blob.bytes);
    }
    assert!(
        tokens.requests() - before <= 1,
        "the pull token is cached: {} requests",
        tokens.requests() - before
    );

    // Anonymous pull works too, with its own token.
    let (_, desc) = anonymous.resolve(&format!("{repo}:1")).await.unwrap();
    assert_eq!(desc.digest(), blobs[2].desc.digest());
}

/// A token service that refuses a wrong password (as Docker Hub's does)
/// fails the request with its 401, and the error says credentials were
/// sent; the right ones still work.
#[tokio::test]
async fn a_token_service_refusing_the_credentials_says_so() {
    let (_dir, tokens, registry) = token_registry();
    tokens.refuse_wrong_credentials();
    let host = registry.host();
    let reference = format!("{host}/tokens/refused:1");
    let blobs = image(false, "linux/amd64", 3000);
    let bob = resolver_for(&host, "bob", "pa55");
    push_all(bob.pusher(&reference).await.unwrap().as_ref(), &blobs).await;

    let mallory = resolver_for(&host, "bob", "guess");
    let err = mallory.resolve(&reference).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    let said = err.to_string();
    assert!(
        said.contains("/token: 401") && said.contains("incorrect username or password"),
        "the token service's answer: {said}"
    );
    assert!(
        said.contains(&format!("refused with the credentials for {host}")),
        "{said}"
    );
}

/// A mount needs pull on the source repository as well as push on the
/// target: the registry's challenge lists both, separated by a space. The
/// OAuth2 form sends them in one `scope`, the GET form one `scope`
/// parameter each; the test kit's token service reads each form strictly.
#[tokio::test]
async fn a_mount_under_token_auth_asks_for_each_scope_by_oauth() {
    mount_under_token_auth(false).await;
}

/// As above, with a token service that refuses the OAuth2 form: GET.
#[tokio::test]
async fn a_mount_under_token_auth_asks_for_each_scope_by_get() {
    mount_under_token_auth(true).await;
}

async fn mount_under_token_auth(refuse_oauth: bool) {
    let (_dir, tokens, registry) = token_registry();
    if refuse_oauth {
        tokens.refuse_oauth();
    }
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    let host = proxy.host();
    let bob = resolver_for(&host, "bob", "pa55");
    let blobs = image(false, "linux/arm64", 50_000);
    let layer = &blobs[0];
    let pusher = bob.pusher(&format!("{host}/team/source:1")).await.unwrap();
    push_all(pusher.as_ref(), std::slice::from_ref(layer)).await;

    let mut desc = layer.desc.clone();
    desc.set_annotations(Some(
        [(source_label_key(&host), "team/source".to_string())].into(),
    ));
    let before = proxy.log().len();
    let pusher = bob.pusher(&format!("{host}/team/target:1")).await.unwrap();
    let err = pusher.push(&desc).await.err().expect("mounted");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let log = proxy.log()[before..].to_vec();
    // Asked once: the token asked for covers the source as well.
    let mounts = log
        .iter()
        .filter(|l| l.starts_with("POST /v2/team/target/blobs/uploads/?mount="))
        .count();
    assert_eq!(mounts, 1, "{log:#?}");
    assert!(
        !log.iter().any(|l| l.starts_with("PUT ")),
        "nothing uploaded: {log:#?}"
    );
    let fetcher = bob.fetcher(&format!("{host}/team/target:1")).await.unwrap();
    assert_eq!(
        fetch_all(fetcher.as_ref(), &layer.desc, 0).await,
        layer.bytes
    );
}

/// A token the registry stops honouring before its `expires_in` is over
/// (skewed clocks, a registry that revokes) is not offered again: the
/// client asks for a new one.
#[tokio::test]
async fn a_cached_token_the_registry_refuses_is_renewed() {
    let (_dir, tokens, registry) = token_registry();
    let reference = format!("{}/tokens/app:1", registry.host());
    let blobs = image(false, "linux/amd64", 5000);
    let bob = resolver_for(&registry.host(), "bob", "pa55");
    push_all(bob.pusher(&reference).await.unwrap().as_ref(), &blobs).await;

    // Honoured for about 8 s (past the registry's 60 s leeway): time for
    // the first resolve on a loaded machine; cached for 300.
    tokens.set_signed_lifetime(-52);
    let carol = DockerResolver::new();
    let (_, desc) = carol.resolve(&reference).await.unwrap();
    assert_eq!(desc.digest(), blobs[2].desc.digest());
    let before = tokens.requests();
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    let (_, desc) = carol
        .resolve(&reference)
        .await
        .expect("a refused token is replaced");
    assert_eq!(desc.digest(), blobs[2].desc.digest());
    assert_eq!(tokens.requests() - before, 1, "one new token");
}

/// An upload `Location` on another host (the registry's `http.host`, as
/// behind a proxy or with uploads stored elsewhere) never gets the
/// registry's credentials, as containerd's pusher drops them there.
#[tokio::test]
async fn credentials_never_go_to_an_upload_location_on_another_host() {
    let (_dir, config) = htpasswd_config();
    // Whatever lies at the advertised host: here a proxy to nowhere that logs.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let elsewhere = FaultProxy::start(nowhere).unwrap();
    let registry =
        Registry::start_advertising(&config, &format!("http://{}", elsewhere.host())).unwrap();
    let alice = resolver_for(&registry.host(), "alice", "s3cret");
    let pusher = alice
        .pusher(&format!("{}/private/app:1", registry.host()))
        .await
        .unwrap();
    let layer = &image(false, "linux/amd64", 5000)[0];
    let mut w = pusher.push(&layer.desc).await.unwrap();
    w.write_all(&layer.bytes).await.unwrap();
    let _ = w.commit(None, None, ocidist_content::Labels::new()).await;
    let log = elsewhere.log();
    assert!(!log.is_empty(), "the upload went to the advertised host");
    assert!(
        log.iter().all(|line| !line.contains("authorization=")),
        "{log:#?}"
    );
}

/// An upload cannot be replayed after a 401, so once its token has expired
/// the next request carries a new one, asked for before it is sent.
#[tokio::test]
async fn an_upload_outliving_its_token_renews_it_before_the_next_request() {
    let (_dir, tokens, registry) = token_registry();
    // Good for a second in our cache (5 s are kept in hand), 300 s for the registry.
    tokens.set_expires_in(6);
    let bob = resolver_for(&registry.host(), "bob", "pa55");
    let pusher = bob
        .pusher(&format!("{}/tokens/slow:1", registry.host()))
        .await
        .unwrap();
    let layer = &image(false, "linux/amd64", 50_000)[0];
    // Named as mountable from a repository that lacks it: the registry
    // answers the mount with an upload session, opened (and its push token
    // obtained) here, and used at the commit.
    let mut desc = layer.desc.clone();
    desc.set_annotations(Some(std::collections::HashMap::from([(
        ocidist_remotes::source::source_label_key(&registry.host()),
        "tokens/elsewhere".to_string(),
    )])));
    let mut w = pusher.push(&desc).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let before = tokens.requests();
    w.write_all(&layer.bytes).await.unwrap();
    w.commit(None, None, ocidist_content::Labels::new())
        .await
        .expect("the upload finishes with a renewed token");
    assert!(tokens.requests() > before, "a new token was asked for");
}

/// An identity token (no user name; what `docker login` stores as
/// `identitytoken`) is sent by the OAuth2 refresh-token grant, as containerd
/// does; the password grant would be refused.
#[tokio::test]
async fn an_identity_token_is_exchanged_by_the_refresh_token_grant() {
    let (_dir, tokens, registry) = token_registry();
    tokens.set_identity_token("id-token-for-bob");
    let with_token = resolver_for(&registry.host(), "", "id-token-for-bob");
    let reference = format!("{}/tokens/identity:1", registry.host());
    let blobs = image(false, "linux/amd64", 3000);
    push_all(
        with_token.pusher(&reference).await.unwrap().as_ref(),
        &blobs,
    )
    .await;
    let (_, desc) = with_token.resolve(&reference).await.unwrap();
    assert_eq!(desc.digest(), blobs[2].desc.digest());

    let wrong = resolver_for(&registry.host(), "", "not-the-token");
    let other = format!("{}/tokens/other:1", registry.host());
    assert_push_refused(&wrong, &other, &blobs[0], true).await;
}

/// The registry with a token service whose realm is a proxy that answers
/// the first POST (the OAuth2 form, credentials and all) with a 307 to a
/// second proxy, another origin in front of the same service.
fn token_registry_redirecting_the_form() -> (
    tempfile::TempDir,
    TokenServer,
    FaultProxy,
    FaultProxy,
    Registry,
) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start("bob", "pa55").unwrap();
    let realm = FaultProxy::start(tokens.addr()).unwrap();
    let elsewhere = FaultProxy::start(tokens.addr()).unwrap();
    let config = tokens
        .registry_config_with_realm(dir.path(), &realm.host())
        .unwrap();
    let registry = Registry::start_binary(&find_binary().unwrap(), &config).unwrap();
    let to_elsewhere = Fault::Redirect(format!("http://{}/token", elsewhere.host()));
    realm.add(Some("POST"), "/token", 1, to_elsewhere);
    (dir, tokens, realm, elsewhere, registry)
}

/// A 307 or 308 repeats the request, body and all: the OAuth2 form holding
/// the password is not sent where one points. The password goes by GET to
/// the realm the registry named, and the push works.
#[tokio::test]
async fn a_token_form_is_not_sent_where_a_redirect_points() {
    let (_dir, _tokens, realm, elsewhere, registry) = token_registry_redirecting_the_form();
    let bob = resolver_for(&registry.host(), "bob", "pa55");
    let reference = format!("{}/tokens/redirected:1", registry.host());
    let blobs = image(false, "linux/amd64", 3000);
    push_all(bob.pusher(&reference).await.unwrap().as_ref(), &blobs).await;

    assert!(elsewhere.log().is_empty(), "{:#?}", elsewhere.log());
    let asked = realm.log();
    assert!(asked[0].starts_with("POST /token"), "{asked:#?}");
    assert!(
        asked[1].starts_with("GET /token?") && asked[1].ends_with("authorization=Basic"),
        "{asked:#?}"
    );
}

/// A token GET redirected to another origin by a 307 is followed, as the
/// client follows other redirects, but without the credentials: the token
/// got there is an anonymous one, which the registry refuses.
#[tokio::test]
async fn a_token_get_redirected_elsewhere_is_followed_without_credentials() {
    let (_dir, tokens, realm, elsewhere, registry) = token_registry_redirecting_the_form();
    let bob = resolver_for(&registry.host(), "bob", "pa55");
    let reference = format!("{}/tokens/get:1", registry.host());
    let blobs = image(false, "linux/amd64", 3000);
    push_all(bob.pusher(&reference).await.unwrap().as_ref(), &blobs).await;

    tokens.refuse_oauth();
    let to_elsewhere = Fault::Redirect(format!("http://{}/token?hop=1", elsewhere.host()));
    realm.add(Some("GET"), "/token", 1, to_elsewhere);
    let bob = resolver_for(&registry.host(), "bob", "pa55");
    let err = bob.resolve(&reference).await.unwrap_err();
    assert!(err.to_string().contains(": 401"), "{err}");
    let asked = realm.log();
    assert!(
        asked
            .iter()
            .any(|l| l.starts_with("GET /token?") && l.ends_with("authorization=Basic")),
        "{asked:#?}"
    );
    let followed = elsewhere.log();
    assert_eq!(followed.len(), 1, "{followed:#?}");
    assert!(
        followed[0].starts_with("GET /token?hop=1") && !followed[0].contains("authorization"),
        "{followed:#?}"
    );
}

/// An identity token is good only for the OAuth2 form: redirected to
/// another origin, the form is not sent there, and the error says where
/// the service pointed.
#[tokio::test]
async fn an_identity_token_form_redirected_elsewhere_is_an_error() {
    let (_dir, tokens, _realm, elsewhere, registry) = token_registry_redirecting_the_form();
    tokens.set_identity_token("id-token-for-bob");
    let with_token = resolver_for(&registry.host(), "", "id-token-for-bob");
    let reference = format!("{}/tokens/redirected:1", registry.host());
    let blobs = image(false, "linux/amd64", 3000);
    let pusher = with_token.pusher(&reference).await.unwrap();
    let err = pusher.push(&blobs[0].desc).await.err().expect("refused");
    let said = format!(
        "redirected the identity token's form to http://{}/token",
        elsewhere.host()
    );
    assert!(err.to_string().contains(&said), "{err}");
    assert!(elsewhere.log().is_empty(), "{:#?}", elsewhere.log());
}

/// Pushing `blob` to `reference` gets as far as the upload, which is refused
/// (a pull-only token), and the error says whether it had credentials.
async fn assert_push_refused(
    resolver: &DockerResolver,
    reference: &str,
    blob: &common::Blob,
    with_credentials: bool,
) {
    let pusher = resolver.pusher(reference).await.unwrap();
    let mut w = pusher
        .push(&blob.desc)
        .await
        .expect("HEAD with a pull token works");
    w.write_all(&blob.bytes).await.unwrap();
    let err = w
        .commit(None, None, ocidist_content::Labels::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let host = reference.split('/').next().unwrap();
    let note = match with_credentials {
        true => format!("refused with the credentials for {host}"),
        false => format!("refused without credentials: none were found for {host}"),
    };
    assert!(err.to_string().contains(&note), "{err}");
}

/// A 401 from where a redirect led (storage that wants credentials of its
/// own) is not answered with the registry's: the fetch fails with that 401,
/// and the other host never sees them, though they would have opened it.
#[tokio::test]
async fn a_challenge_from_a_redirect_target_is_not_answered() {
    let (_dir, private) = htpasswd_registry();
    let (_dir2, storage) = htpasswd_registry();
    let private_proxy = FaultProxy::start(private.addr()).unwrap();
    let storage_proxy = FaultProxy::start(storage.addr()).unwrap();
    let blobs = image(false, "linux/amd64", 5000);
    let layer = &blobs[0];
    for host in [private_proxy.host(), storage_proxy.host()] {
        let alice = resolver_for(&host, "alice", "s3cret");
        let pusher = alice.pusher(&format!("{host}/app/x:1")).await.unwrap();
        push_all(pusher.as_ref(), &blobs).await;
    }
    let before = storage_proxy.log().len();
    private_proxy.add(
        Some("GET"),
        &format!("/blobs/{}", layer.desc.digest()),
        1,
        Fault::Redirect(format!(
            "http://{}/v2/app/x/blobs/{}",
            storage_proxy.host(),
            layer.desc.digest()
        )),
    );
    let alice = resolver_for(&private_proxy.host(), "alice", "s3cret");
    let fetcher = alice
        .fetcher(&format!("{}/app/x:1", private_proxy.host()))
        .await
        .unwrap();
    let fetched = async {
        let stream = fetcher.fetch(&layer.desc, 0).await?;
        futures::TryStreamExt::try_collect::<Vec<bytes::Bytes>>(stream).await
    };
    let err = fetched.await.unwrap_err();
    // Said by the storage, and named so, by its origin alone.
    let said_by = format!("(redirected to http://{}): 401", storage_proxy.host());
    assert!(err.to_string().contains(&said_by), "{err}");
    let log = &storage_proxy.log()[before..];
    assert!(!log.is_empty());
    assert!(
        log.iter().all(|l| !l.contains("authorization=")),
        "{log:#?}"
    );
}

#[tokio::test]
async fn credentials_never_follow_a_redirect_to_another_host() {
    // A private registry whose blob GETs redirect (as to a storage service)
    // to a second, public registry holding the same blobs.
    let (_dir, private) = htpasswd_registry();
    let storage = common::registry();
    let private_proxy = FaultProxy::start(private.addr()).unwrap();
    let storage_proxy = FaultProxy::start(storage.addr()).unwrap();
    let cdn_proxy = FaultProxy::start(storage.addr()).unwrap();
    let blobs = image(false, "linux/amd64", 50_000);
    let layer = &blobs[0];
    let alice = resolver_for(&private_proxy.host(), "alice", "s3cret");
    push_all(
        alice
            .pusher(&format!("{}/private/app:1", private_proxy.host()))
            .await
            .unwrap()
            .as_ref(),
        &blobs,
    )
    .await;
    push_all(
        DockerResolver::new()
            .pusher(&format!("{}/public/app:1", storage.host()))
            .await
            .unwrap()
            .as_ref(),
        &blobs,
    )
    .await;
    let at = |proxy: &FaultProxy| {
        format!(
            "http://{}/v2/public/app/blobs/{}",
            proxy.host(),
            layer.desc.digest()
        )
    };
    // Four hops: the storage host redirects within itself, then to a CDN,
    // which does the same; every hop carries the first request's headers
    // unless taken off.
    private_proxy.add(
        Some("GET"),
        &format!("/blobs/{}", layer.desc.digest()),
        1,
        Fault::Redirect(format!("{}?hop=1", at(&storage_proxy))),
    );
    let hop = |n| Fault::Redirect(format!("{}?hop={n}", at(&storage_proxy)));
    storage_proxy.add(Some("GET"), "hop=1", 1, hop(2));
    let to_cdn = Fault::Redirect(format!("{}?hop=3", at(&cdn_proxy)));
    storage_proxy.add(Some("GET"), "hop=2", 1, to_cdn);
    cdn_proxy.add(Some("GET"), "hop=3", 1, Fault::Redirect(at(&cdn_proxy)));

    let fetcher = alice
        .fetcher(&format!("{}/private/app:1", private_proxy.host()))
        .await
        .unwrap();
    assert!(common::fetch_all(fetcher.as_ref(), &layer.desc, 0).await == layer.bytes);

    // The registry got alice's password; the storage host never saw it.
    let asked = private_proxy.log();
    assert!(
        asked
            .iter()
            .any(|l| l.starts_with("GET /v2/private/app/blobs/")
                && l.ends_with("authorization=Basic")),
        "{asked:#?}"
    );
    let mut served = storage_proxy.log();
    served.extend(cdn_proxy.log());
    assert_eq!(served.len(), 4, "{served:#?}");
    assert!(
        served
            .iter()
            .all(|l| l.starts_with("GET /v2/public/app/blobs/") && !l.contains("authorization")),
        "{served:#?}"
    );
}
