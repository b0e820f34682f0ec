//! containerd's hosts.toml: mirrors tried first, then the upstream; pushes go
//! only where `push` is allowed.

mod common;

use common::{image, push_all, registry};
use ocidist_remotes::Resolver;
use ocidist_remotes::docker::DockerResolver;
use ocidist_remotes::testkit::get_status;

/// A registry holding `lib/app:1`, and that image's blobs.
async fn mirror_with_image() -> (ocidist_remotes::testkit::Registry, Vec<common::Blob>) {
    let mirror = registry();
    let blobs = image(false, "linux/amd64", 2000);
    let pusher = DockerResolver::new()
        .pusher(&format!("{}/lib/app:1", mirror.host()))
        .await
        .unwrap();
    push_all(pusher.as_ref(), &blobs).await;
    (mirror, blobs)
}

/// An address nobody listens on.
fn dead_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A hosts directory with `hosts_toml` for `host`.
fn hosts_dir_with(host: &str, hosts_toml: &str) -> tempfile::TempDir {
    let hosts = tempfile::tempdir().unwrap();
    let dir = hosts.path().join(host);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hosts.toml"), hosts_toml).unwrap();
    hosts
}

#[tokio::test]
async fn mirrors_first_then_the_upstream_and_pushes_to_the_upstream() {
    // Only the mirror has the image.
    let (mirror, blobs) = mirror_with_image().await;
    let upstream = registry();

    // A dead mirror first (a port nobody listens on), then the live one.
    let dead = dead_address();
    let hosts = hosts_dir_with(
        &upstream.host(),
        &format!(
            "server = \"http://{up}\"\n\n[host.\"http://{dead}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  [host.\"http://{mirror}\".header]\n    x-ocidist-test = \"1\"\n",
            up = upstream.host(),
            mirror = mirror.host(),
        ),
    );
    let resolver = DockerResolver::new().hosts_dir(hosts.path());
    let reference = format!("{}/lib/app:1", upstream.host());
    resolve_and_fetch_a_layer(&resolver, &reference, &blobs).await;

    pushes_go_to_the_upstream_only(&resolver, &upstream, &mirror).await;
}

/// Pushes an image to `upstream`'s `lib/other:1` through `resolver`, whose
/// mirror `mirror` may not take pushes: the blobs land at the upstream only.
async fn pushes_go_to_the_upstream_only(
    resolver: &DockerResolver,
    upstream: &ocidist_remotes::testkit::Registry,
    mirror: &ocidist_remotes::testkit::Registry,
) {
    let other = image(false, "linux/s390x", 1000);
    let pusher = resolver
        .pusher(&format!("{}/lib/other:1", upstream.host()))
        .await
        .unwrap();
    push_all(pusher.as_ref(), &other).await;
    let path = format!("/v2/lib/other/blobs/{}", other[0].desc.digest());
    assert_eq!(get_status(upstream.addr(), &path).unwrap(), 200);
    assert_eq!(get_status(mirror.addr(), &path).unwrap(), 404);
}

/// A pull-only mirror serves references by digest (their bytes are checked)
/// but not by tag, which needs `resolve`: containerd's rule, and the usual
/// air-gapped setup, here with the upstream unreachable.
#[tokio::test]
async fn a_pull_only_mirror_serves_digests_but_not_tags() {
    let (mirror, blobs) = mirror_with_image().await;
    let upstream = dead_address().to_string();
    let hosts = hosts_dir_with(
        &upstream,
        &format!(
            "server = \"http://{upstream}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\"]\n",
            mirror = mirror.host(),
        ),
    );
    let resolver = DockerResolver::new().hosts_dir(hosts.path());
    let manifest = &blobs[2].desc;
    let (_, desc) = resolver
        .resolve(&format!("{upstream}/lib/app@{}", manifest.digest()))
        .await
        .expect("the mirror serves the digest");
    assert_eq!(desc.digest(), manifest.digest());
    let err = resolver
        .resolve(&format!("{upstream}/lib/app:1"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot connect"),
        "only the dead upstream resolves tags: {err}"
    );
}

/// A failing mirror is passed over at once, not retried with backoff on
/// every request (containerd retries only on the last endpoint); the
/// upstream, last, still is. Each time, the caller's hook hears of it, with
/// the mirror's error, as containerd logs "trying next host".
#[tokio::test]
async fn a_failing_mirror_is_asked_once_per_request_and_the_hook_told() {
    let (upstream, blobs) = mirror_with_image().await;
    let busy = registry();
    let mirror = ocidist_remotes::testkit::FaultProxy::start(busy.addr()).unwrap();
    mirror.add(
        None,
        "/v2/",
        usize::MAX,
        ocidist_remotes::testkit::Fault::Status {
            status: 503,
            retry_after: Some(5),
        },
    );
    let hosts = hosts_dir_with(
        &upstream.host(),
        &format!(
            "server = \"http://{up}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            up = upstream.host(),
            mirror = mirror.host(),
        ),
    );
    let skipped = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let told = skipped.clone();
    let resolver = DockerResolver::new()
        .hosts_dir(hosts.path())
        .on_host_skipped(move |s| {
            let line = format!("{} {}", s.host, s.error);
            told.lock().unwrap().push(line);
        });
    let reference = format!("{}/lib/app:1", upstream.host());
    resolve_and_fetch_a_layer(&resolver, &reference, &blobs).await;
    // One HEAD of the manifest, one GET of the layer, each naming the
    // registry it is for, as containerd does for mirrors.
    assert_eq!(mirror.requests(), 2, "{:#?}", mirror.log());
    let skipped = skipped.lock().unwrap().clone();
    assert_eq!(skipped.len(), 2, "{skipped:#?}");
    for (line, what) in skipped.iter().zip(["/manifests/1", "/blobs/sha256:"]) {
        assert!(
            line.starts_with(&format!("{} ", mirror.host()))
                && line.contains(what)
                && line.contains("503"),
            "{skipped:#?}"
        );
    }
    let ns = format!("ns={}", upstream.host().replace(':', "%3A"));
    assert!(
        mirror.log().iter().all(|l| l.contains(&ns)),
        "{:#?}",
        mirror.log()
    );
}

/// When every host fails, each one's error is reported, the last host's
/// first: it decides the kind (here the upstream is down, which is worth
/// trying again, whatever a mirror without the image said), and a mirror
/// passed over is named rather than passed over in silence.
#[tokio::test]
async fn every_host_that_failed_is_reported_and_the_last_decides_the_kind() {
    let empty = registry();
    let mirror = ocidist_remotes::testkit::FaultProxy::start(empty.addr()).unwrap();
    let upstream = dead_address().to_string();
    let hosts = hosts_dir_with(
        &upstream,
        &format!(
            "server = \"http://{upstream}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror = mirror.host(),
        ),
    );
    let skipped = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let told = skipped.clone();
    let resolver = DockerResolver::new()
        .hosts_dir(hosts.path())
        .on_host_skipped(move |s| told.lock().unwrap().push(s.host.to_string()));
    let reference = format!("{upstream}/lib/app:1");
    let err = resolver.resolve(&reference).await.unwrap_err();
    assert_eq!(err.kind(), ocidist_content::ErrorKind::Unavailable, "{err}");
    let said = ocidist_content::Report::new(&err).to_string();
    let (earlier, last) = said.split_once("; the last one too: ").expect(&said);
    assert!(
        earlier.starts_with("2 hosts failed: ")
            && earlier.contains(&mirror.host())
            && earlier.contains("404"),
        "{said}"
    );
    assert!(
        last.contains(&upstream) && last.contains("cannot connect"),
        "{said}"
    );
    // A walk of the causes reaches the last host's error, said once.
    let cause = std::error::Error::source(&err).expect("the last host's error is the source");
    assert_eq!(
        ocidist_content::Report::new(cause).to_string(),
        last,
        "{said}"
    );
    assert!(!err.to_string().contains("cannot connect"), "{err}");

    // A blob, the same way.
    let blob = &image(false, "linux/amd64", 100)[0].desc;
    let fetcher = resolver.fetcher(&reference).await.unwrap();
    let err = match fetcher.fetch(blob, 0).await {
        Ok(_) => panic!("no host has the blob"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ocidist_content::ErrorKind::Unavailable, "{err}");
    let said = ocidist_content::Report::new(&err).to_string();
    assert!(
        said.contains("cannot connect") && said.contains("404") && said.contains(&mirror.host()),
        "{said}"
    );
    // The hook hears of the mirror passed over, not of the last host,
    // whose error is the one returned.
    assert_eq!(*skipped.lock().unwrap(), [mirror.host(), mirror.host()]);
}

/// The value of header `name` in a request head, if sent.
fn header_in(head: &[String], name: &str) -> Option<String> {
    head.iter()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
}

/// Mirrors are asked in the file's order, the upstream only when none
/// answers; each endpoint's `header` table goes with every request to it
/// and to no other endpoint.
#[tokio::test]
async fn mirrors_are_asked_in_order_each_with_its_own_headers() {
    use ocidist_remotes::testkit::{Fault, FaultProxy};
    let (mirror, blobs) = mirror_with_image().await;
    let (upstream, _) = mirror_with_image().await;
    let first = FaultProxy::start(mirror.addr()).unwrap();
    let second = FaultProxy::start(mirror.addr()).unwrap();
    let last = FaultProxy::start(upstream.addr()).unwrap();
    let hosts = hosts_dir_with(
        &last.host(),
        &format!(
            "server = \"http://{last}\"\n[header]\n  x-endpoint = \"upstream\"\n\n\
             [host.\"http://{first}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
             [host.\"http://{first}\".header]\n  x-endpoint = \"first\"\n  x-list = [\"a\", \"b\"]\n\n\
             [host.\"http://{second}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
             [host.\"http://{second}\".header]\n  x-endpoint = \"second\"\n",
            last = last.host(),
            first = first.host(),
            second = second.host(),
        ),
    );
    let resolver = DockerResolver::new().hosts_dir(hosts.path());
    let reference = format!("{}/lib/app:1", last.host());
    resolve_and_fetch_a_layer(&resolver, &reference, &blobs).await;
    assert_eq!(first.requests(), 2, "{:#?}", first.log());
    assert_eq!((second.requests(), last.requests()), (0, 0));
    for head in first.heads() {
        assert_eq!(header_in(&head, "x-endpoint").as_deref(), Some("first"));
        let list: Vec<&String> = head.iter().filter(|l| l.starts_with("x-list:")).collect();
        assert_eq!(list.len(), 2, "each value of a list is sent: {head:#?}");
    }

    // The first mirror fails: the second answers, with its own header.
    let fail_every_request = |proxy: &FaultProxy| {
        let unavailable = Fault::Status {
            status: 503,
            retry_after: None,
        };
        proxy.add(None, "/v2/", usize::MAX, unavailable);
    };
    fail_every_request(&first);
    resolve_and_fetch_a_layer(&resolver, &reference, &blobs).await;
    assert_eq!(second.requests(), 2, "{:#?}", second.log());
    assert_eq!(last.requests(), 0);
    for head in second.heads() {
        assert_eq!(header_in(&head, "x-endpoint").as_deref(), Some("second"));
        assert_eq!(header_in(&head, "x-list"), None);
    }

    // Both fail: the upstream answers, with the top level's header.
    fail_every_request(&second);
    resolve_and_fetch_a_layer(&resolver, &reference, &blobs).await;
    assert_eq!(last.requests(), 2, "{:#?}", last.log());
    for head in last.heads() {
        assert_eq!(header_in(&head, "x-endpoint").as_deref(), Some("upstream"));
    }
}

/// Every request names the program: `ocidist/VERSION`, or what the caller
/// chose, from the resolver's own client and from the client of an
/// endpoint with connection settings of its own.
#[tokio::test]
async fn every_request_carries_the_user_agent_the_caller_chose() {
    use ocidist_remotes::testkit::FaultProxy;
    let (registry, blobs) = mirror_with_image().await;
    let agents_of = async |resolver: &dyn Fn(&str) -> DockerResolver| {
        let proxy = FaultProxy::start(registry.addr()).unwrap();
        let reference = format!("{}/lib/app:1", proxy.host());
        resolve_and_fetch_a_layer(&resolver(&proxy.host()), &reference, &blobs).await;
        let heads = proxy.heads();
        assert!(heads.len() >= 2, "{heads:#?}");
        let agents: std::collections::BTreeSet<Option<String>> =
            heads.iter().map(|h| header_in(h, "user-agent")).collect();
        agents.into_iter().collect::<Vec<_>>()
    };
    let ours = ocidist_remotes::docker::DEFAULT_USER_AGENT;
    assert!(ours.starts_with("ocidist/"));
    assert_eq!(
        agents_of(&|_| DockerResolver::new()).await,
        [Some(ours.to_string())]
    );
    let chosen = Some("my-runtime/1.2".to_string());
    let named = |_: &str| DockerResolver::new().user_agent("my-runtime/1.2").unwrap();
    assert_eq!(agents_of(&named).await, std::slice::from_ref(&chosen));
    let hosts = tempfile::tempdir().unwrap();
    let with_own_client = |host: &str| {
        let dir = hosts.path().join(host);
        std::fs::create_dir_all(&dir).unwrap();
        let toml = format!("server = \"http://{host}\"\ndial_timeout = \"5s\"\n");
        std::fs::write(dir.join("hosts.toml"), toml).unwrap();
        DockerResolver::new()
            .hosts_dir(hosts.path())
            .user_agent("my-runtime/1.2")
            .unwrap()
    };
    assert_eq!(agents_of(&with_own_client).await, [chosen]);
}

/// Headers set on the resolver go with every request to every endpoint; an
/// endpoint's own `[header]` of the same name replaces them there, and the
/// others still go.
#[tokio::test]
async fn resolver_headers_go_everywhere_and_an_endpoints_own_replace_them() {
    use ocidist_remotes::testkit::FaultProxy;
    let (registry, blobs) = mirror_with_image().await;
    let values_of = async |resolver: &dyn Fn(&str) -> DockerResolver, name: &str| {
        let proxy = FaultProxy::start(registry.addr()).unwrap();
        let reference = format!("{}/lib/app:1", proxy.host());
        resolve_and_fetch_a_layer(&resolver(&proxy.host()), &reference, &blobs).await;
        let heads = proxy.heads();
        assert!(heads.len() >= 2, "{heads:#?}");
        // The bare `GET /v2/` that asks a loopback registry whether it
        // speaks TLS carries no configured headers (they may be credentials,
        // and it goes in plain HTTP first).
        let values: std::collections::BTreeSet<Vec<String>> = heads
            .iter()
            .filter(|head| head[0] != "GET /v2/ HTTP/1.1")
            .map(|head| {
                head.iter()
                    .filter_map(|l| l.split_once(':'))
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
                    .collect()
            })
            .collect();
        values.into_iter().collect::<Vec<_>>()
    };
    let resolver = |_: &str| {
        DockerResolver::new()
            .header("X-Api-Key", "k-1")
            .unwrap()
            .header("X-Tenant", "blue")
            .unwrap()
    };
    assert_eq!(values_of(&resolver, "x-api-key").await, [vec!["k-1"]]);
    assert_eq!(values_of(&resolver, "x-tenant").await, [vec!["blue"]]);
    let hosts = tempfile::tempdir().unwrap();
    let with_own = |host: &str| {
        let dir = hosts.path().join(host);
        std::fs::create_dir_all(&dir).unwrap();
        let toml = format!("server = \"http://{host}\"\n[header]\n  x-api-key = \"k-own\"\n");
        std::fs::write(dir.join("hosts.toml"), toml).unwrap();
        resolver(host).hosts_dir(hosts.path())
    };
    assert_eq!(values_of(&with_own, "x-api-key").await, [vec!["k-own"]]);
    assert_eq!(values_of(&with_own, "x-tenant").await, [vec!["blue"]]);
    let refused = DockerResolver::new()
        .header("X-Key", "two\nlines")
        .unwrap_err();
    assert_eq!(refused.kind(), ocidist_content::ErrorKind::InvalidArgument);
}

/// A redirect chain that leaves the registry (for a storage host, then a
/// CDN, each moving within itself) takes the endpoint's configured headers
/// to every hop, as Go's client (so containerd) sends them, but never a
/// configured header that holds credentials.
#[tokio::test]
async fn configured_headers_follow_redirects_but_configured_credentials_do_not() {
    use ocidist_remotes::testkit::{Fault, FaultProxy};
    let (registry, blobs) = mirror_with_image().await;
    let front = FaultProxy::start(registry.addr()).unwrap();
    let storage = FaultProxy::start(registry.addr()).unwrap();
    let cdn = FaultProxy::start(registry.addr()).unwrap();
    let layer = &blobs[0];
    let at = |proxy: &FaultProxy, hop: usize| {
        let digest = layer.desc.digest();
        Fault::Redirect(format!(
            "http://{}/v2/lib/app/blobs/{digest}?hop={hop}",
            proxy.host()
        ))
    };
    front.add(
        Some("GET"),
        &format!("/blobs/{}", layer.desc.digest()),
        1,
        at(&storage, 1),
    );
    storage.add(Some("GET"), "hop=1", 1, at(&storage, 2));
    storage.add(Some("GET"), "hop=2", 1, at(&cdn, 3));
    cdn.add(Some("GET"), "hop=3", 1, at(&cdn, 4));
    let hosts = hosts_dir_with(
        &front.host(),
        &format!(
            "server = \"http://{}\"\n[header]\n  x-tenant = \"blue\"\n  \
             authorization = \"Bearer configured\"\n",
            front.host()
        ),
    );
    let resolver = DockerResolver::new().hosts_dir(hosts.path());
    let fetcher = resolver
        .fetcher(&format!("{}/lib/app:1", front.host()))
        .await
        .unwrap();
    assert!(common::fetch_all(fetcher.as_ref(), &layer.desc, 0).await == layer.bytes);

    let front_heads = front.heads();
    assert_eq!(front_heads.len(), 1, "{:#?}", front.log());
    assert_eq!(
        header_in(&front_heads[0], "x-tenant").as_deref(),
        Some("blue")
    );
    assert_eq!(
        header_in(&front_heads[0], "authorization").as_deref(),
        Some("Bearer configured")
    );
    let mut hops = storage.heads();
    hops.extend(cdn.heads());
    assert_eq!(hops.len(), 4, "{:#?} {:#?}", storage.log(), cdn.log());
    for head in &hops {
        assert_eq!(
            header_in(head, "x-tenant").as_deref(),
            Some("blue"),
            "{head:#?}"
        );
        assert_eq!(header_in(head, "authorization"), None, "{head:#?}");
    }
}

/// The configured headers go to the endpoint's token service too, as
/// containerd (2.1 on) sends them (a gateway's API key), but not those that
/// hold credentials: the token service is another origin. A configured
/// `Authorization` is replaced by the token at the registry, not sent
/// beside it (the push would be refused).
#[tokio::test]
async fn configured_headers_go_to_the_token_service_but_configured_credentials_do_not() {
    use ocidist_remotes::testkit::{FaultProxy, Registry, TokenServer, find_binary};
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start("bob", "pa55").unwrap();
    let realm = FaultProxy::start(tokens.addr()).unwrap();
    let config = tokens
        .registry_config_with_realm(dir.path(), &realm.host())
        .unwrap();
    let registry = Registry::start_binary(&find_binary().unwrap(), &config).unwrap();
    let hosts = hosts_dir_with(
        &registry.host(),
        &format!(
            "server = \"http://{}\"\n[header]\n  x-api-key = \"k1\"\n  \
             cookie = \"session=configured\"\n  authorization = \"Bearer configured\"\n",
            registry.host()
        ),
    );
    let credential = ocidist_remotes::docker::auth::Credential {
        username: "bob".into(),
        secret: "pa55".into(),
    };
    let credentials = ocidist_remotes::docker::auth::StaticCredentials(
        std::collections::HashMap::from([(registry.host(), credential)]),
    );
    let credentials = std::sync::Arc::new(credentials);
    let with_password = || {
        DockerResolver::new()
            .hosts_dir(hosts.path())
            .credentials(credentials.clone())
    };
    let reference = format!("{}/lib/app:1", registry.host());
    let blobs = image(false, "linux/amd64", 2000);
    let pusher = with_password().pusher(&reference).await.unwrap();
    push_all(pusher.as_ref(), &blobs).await;

    // Without the OAuth2 form: the password by GET.
    tokens.refuse_oauth();
    with_password().resolve(&reference).await.unwrap();
    let anonymous = DockerResolver::new().hosts_dir(hosts.path());
    // Whatever the token is good for: what matters is how it was asked.
    let _ = anonymous.resolve(&reference).await;
    let heads = realm.heads();
    let by = |method: &str, with_basic: bool| {
        heads.iter().find(|head| {
            head[0].starts_with(method)
                && header_in(head, "authorization").is_some_and(|a| a.starts_with("Basic"))
                    == with_basic
        })
    };
    // The OAuth2 form, a GET with the password, and an anonymous GET.
    for head in [by("POST", false), by("GET", true), by("GET", false)] {
        let head = head.unwrap_or_else(|| panic!("{heads:#?}"));
        assert_eq!(
            header_in(head, "x-api-key").as_deref(),
            Some("k1"),
            "{head:#?}"
        );
        assert!(head.iter().all(|l| !l.contains("configured")), "{head:#?}");
    }
}

/// Resolves `reference` to the image of `blobs` and fetches its layer.
async fn resolve_and_fetch_a_layer(
    resolver: &DockerResolver,
    reference: &str,
    blobs: &[common::Blob],
) {
    let (_, desc) = resolver.resolve(reference).await.unwrap();
    assert_eq!(desc.digest(), blobs[2].desc.digest());
    let fetcher = resolver.fetcher(reference).await.unwrap();
    let chunks: Vec<bytes::Bytes> =
        futures::TryStreamExt::try_collect(fetcher.fetch(&blobs[0].desc, 0).await.unwrap())
            .await
            .unwrap();
    assert_eq!(chunks.concat(), blobs[0].bytes);
}

/// A mirror that serves a Docker schema 1 manifest: the refusal names it,
/// instead of the upstream's "not found" hiding it.
#[tokio::test]
async fn a_schema1_manifest_on_a_mirror_is_the_error_reported() {
    use ocidist_remotes::testkit::{Fault, FaultProxy};
    let (mirror, _blobs) = mirror_with_image().await;
    let proxy = FaultProxy::start(mirror.addr()).unwrap();
    proxy.add(
        None,
        "/manifests/old",
        2,
        Fault::AnswerAs {
            status: 200,
            content_type: "text/plain".into(),
            body: r#"{"schemaVersion": 1, "name": "lib/app", "tag": "old"}"#.into(),
        },
    );
    let upstream = registry();
    let hosts = hosts_dir_with(
        &upstream.host(),
        &format!(
            "server = \"http://{up}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            up = upstream.host(),
            mirror = proxy.host(),
        ),
    );
    let resolver = DockerResolver::new().hosts_dir(hosts.path());
    let err = resolver
        .resolve(&format!("{}/lib/app:old", upstream.host()))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ocidist_content::ErrorKind::Unimplemented,
        "{err}"
    );
    assert!(err.to_string().contains("schema 1"), "{err}");
}

/// Endpoints given in code instead of a hosts directory, as containerd's
/// `ResolverOptions.Hosts`: the function gets the registry and its upstream
/// URL, and its endpoints are used as a hosts file's are (mirrors in order,
/// a URL written without its trailing `/` or taken as written; pushes only
/// where allowed); an error it returns is the resolve's.
#[tokio::test]
async fn mirrors_given_in_code_are_tried_first_as_a_hosts_file_writes_them() {
    use ocidist_remotes::docker::hosts::{Capabilities, Endpoint};
    use std::sync::{Arc, Mutex};
    let (mirror, blobs) = mirror_with_image().await;
    let watched = ocidist_remotes::testkit::FaultProxy::start(mirror.addr()).unwrap();
    let upstream = registry();
    let dead = dead_address();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let pull_only = Capabilities {
        pull: true,
        resolve: true,
        push: false,
    };
    let (mirror_url, dead_url) = (
        format!("http://{}/", watched.host()),
        format!("http://{dead}"),
    );
    let seen = asked.clone();
    let resolver = DockerResolver::new().registry_hosts(move |registry, upstream_url| {
        seen.lock()
            .unwrap()
            .push((registry.to_string(), upstream_url.to_string()));
        if registry.starts_with("refused.") {
            return Err(ocidist_remotes::Error::other(
                ocidist_content::ErrorKind::PermissionDenied,
                "this runtime does not pull from there",
            )
            .into());
        }
        if registry.starts_with("unreadable.") {
            return Err("the runtime's configuration has no entry for it".into());
        }
        if registry.starts_with("gone.") {
            return Err(ocidist_content::Error::other(
                ocidist_content::ErrorKind::NotFound,
                "its configuration entry was deleted",
            )
            .into());
        }
        Ok(vec![
            Endpoint {
                capabilities: pull_only,
                ..Endpoint::new(dead_url.clone())
            },
            Endpoint {
                capabilities: pull_only,
                ..Endpoint::new(mirror_url.clone())
            },
            Endpoint::upstream(upstream_url.to_string()),
        ])
    });
    let reference = format!("{}/lib/app:1", upstream.host());
    resolve_and_fetch_a_layer(&resolver, &reference, &blobs).await;
    let log = watched.log();
    assert_eq!(log.len(), 2, "a HEAD and a GET, at the mirror: {log:#?}");
    assert!(log.iter().all(|l| l.contains(" /v2/lib/app/")), "{log:#?}");
    let asked_for = asked.lock().unwrap().clone();
    assert!(
        asked_for.contains(&(upstream.host(), format!("http://{}", upstream.host()))),
        "the registry and its upstream as the resolver reaches it: {asked_for:?}"
    );

    pushes_go_to_the_upstream_only(&resolver, &upstream, &mirror).await;

    let err = resolver
        .resolve("refused.example/lib/app:1")
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ocidist_content::ErrorKind::PermissionDenied,
        "{err}"
    );
    assert!(
        err.to_string().contains("does not pull from there"),
        "{err}"
    );
    let err = resolver
        .fetcher("unreadable.example/lib/app:1")
        .await
        .err()
        .expect("no endpoints");
    assert_eq!(
        err.kind(),
        ocidist_content::ErrorKind::InvalidArgument,
        "{err}"
    );
    assert!(
        err.to_string().contains("the hosts of unreadable.example")
            && err.to_string().contains("has no entry for it"),
        "{err}"
    );
    let err = resolver
        .resolve("gone.example/lib/app:1")
        .await
        .unwrap_err();
    assert!(
        err.is_not_found(),
        "the content error's kind is kept: {err}"
    );
}
