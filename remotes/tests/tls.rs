//! HTTPS to the real registry with a certificate from a CA generated here:
//! refused without the CA, accepted with it; and a registry that requires
//! client certificates (mutual TLS), configured as containerd and Docker
//! users already do.

mod common;

use common::{fetch_all, image, push_all};
use ocidist_content::ErrorKind;
use ocidist_remotes::docker::{DockerResolver, PlainHttp};
use ocidist_remotes::testkit::{Fault, FaultProxy, Registry};
use ocidist_remotes::testkit::{TestCertificates, write_self_signed_server};
use ocidist_remotes::{Error, Resolver};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A TCP relay on 127.0.0.1 to `to` that counts the connections made
/// through it (TLS passes through untouched). It stops with the test's
/// runtime.
async fn counting_relay(to: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, connections)
}

/// The error resolving `host/settled/app:1` with `hosts_toml` as the
/// host's `hosts.toml`; the resolve must fail.
async fn refused_with_hosts_toml(host: &str, hosts_toml: &str) -> Error {
    let hosts = tempfile::tempdir().unwrap();
    std::fs::create_dir(hosts.path().join(host)).unwrap();
    std::fs::write(hosts.path().join(host).join("hosts.toml"), hosts_toml).unwrap();
    DockerResolver::new()
        .hosts_dir(hosts.path())
        .resolve(&format!("{host}/settled/app:1"))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn https_needs_the_ca_and_works_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCertificates::write(dir.path()).unwrap();
    let registry = Registry::start_tls(&certs.server_cert, &certs.server_key)
        .expect("the registry must start with TLS (apt-get install docker-registry)");
    let repo = format!("{}/tls/app", registry.host());

    push_and_resolve_trusting(&certs.ca, &repo).await;

    // A certificate nobody trusts is refused, and not asked again: every
    // attempt would be refused the same way.
    let (relay, connections) = counting_relay(registry.addr()).await;
    let stranger = DockerResolver::new().plain_http(PlainHttp::Never);
    let err = stranger
        .resolve(&format!("{relay}/tls/app:1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    let chain = format!("{:?}", err);
    assert!(
        chain.to_lowercase().contains("certificate"),
        "the cause names the certificate: {chain}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1, "tried once");

    let careless = DockerResolver::new()
        .plain_http(PlainHttp::Never)
        .tls(&[], true)
        .unwrap();
    assert!(careless.resolve(&format!("{repo}:1")).await.is_ok());
}

/// A CA given in memory (a runtime's own configuration, a Kubernetes
/// secret) is trusted as a CA file is, by the resolver's client and by an
/// endpoint's own (one with settings of its own, here a dial timeout); a
/// PEM with no certificate is refused up front, naming it.
#[tokio::test]
async fn a_ca_given_in_memory_is_trusted_as_a_file_is() {
    use ocidist_remotes::docker::hosts::Endpoint;
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCertificates::write(dir.path()).unwrap();
    let registry = Registry::start_tls(&certs.server_cert, &certs.server_key)
        .expect("the registry must start with TLS (apt-get install docker-registry)");
    let pem = std::fs::read(&certs.ca).unwrap();
    let trusting = DockerResolver::new()
        .plain_http(PlainHttp::Never)
        .ca_pem(&pem)
        .unwrap();
    push_and_resolve(&trusting, &format!("{}/tls/mem", registry.host())).await;

    let with_own_settings = trusting.registry_hosts(|_, upstream| {
        Ok(vec![Endpoint {
            dial_timeout: Some(std::time::Duration::from_secs(5)),
            ..Endpoint::upstream(upstream.to_string())
        }])
    });
    push_and_resolve(&with_own_settings, &format!("{}/tls/own", registry.host())).await;

    // Without it, the same registry is refused.
    let err = DockerResolver::new()
        .plain_http(PlainHttp::Never)
        .resolve(&format!("{}/tls/mem:1", registry.host()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");

    let err = DockerResolver::new()
        .ca_pem(&pem)
        .unwrap()
        .ca_pem(b"-----BEGIN NOTHING-----")
        .unwrap_err();
    assert!(matches!(err, Error::TlsConfig { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().starts_with("<CA PEM 2>"), "{err}");
}

/// A registry whose certificate is self-signed and a CA's too (`openssl req
/// -x509`, as Docker's guide makes one) is trusted when that certificate is
/// given as the CA, as Go and curl trust it; one for another name still is
/// not.
#[tokio::test]
async fn a_self_signed_certificate_given_as_its_own_ca_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_self_signed_server(dir.path(), &["localhost", "127.0.0.1"]).unwrap();
    let registry = Registry::start_tls(&cert, &key)
        .expect("the registry must start with TLS (apt-get install docker-registry)");
    let repo = format!("{}/tls/self", registry.host());
    push_and_resolve_trusting(&cert, &repo).await;

    let other = tempfile::tempdir().unwrap();
    let (elsewhere, elsewhere_key) =
        write_self_signed_server(other.path(), &["registry.example"]).unwrap();
    let misnamed = Registry::start_tls(&elsewhere, &elsewhere_key)
        .expect("the registry must start with TLS (apt-get install docker-registry)");
    let err = DockerResolver::new()
        .plain_http(PlainHttp::Never)
        .tls(&[elsewhere], false)
        .unwrap()
        .resolve(&format!("{}/tls/self:1", misnamed.host()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
}

/// A loopback registry on a port of its own is spoken to as containerd
/// speaks to one, with no settings at all: over HTTPS, its certificate
/// unchecked, when it speaks TLS; in plain HTTP when it answers in plain
/// HTTP, which one request settles for the whole resolver. Settings in
/// `hosts.toml` are taken at their word.
#[tokio::test]
async fn loopback_registries_are_spoken_to_in_the_protocol_they_speak() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCertificates::write(dir.path()).unwrap();
    let tls = Registry::start_tls(&certs.server_cert, &certs.server_key)
        .expect("the registry must start with TLS (apt-get install docker-registry)");
    let plain =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let proxy = FaultProxy::start(plain.addr()).unwrap();
    let blobs = image(false, "linux/amd64", 1000);
    for host in [tls.host(), proxy.host()] {
        let reference = format!("{host}/settled/app:1");
        let resolver = DockerResolver::new();
        push_all(resolver.pusher(&reference).await.unwrap().as_ref(), &blobs).await;
        let (_, desc) = resolver.resolve(&reference).await.unwrap();
        assert_eq!(desc.digest(), blobs[2].desc.digest(), "{host}");
        let fetcher = resolver.fetcher(&reference).await.unwrap();
        let layer = fetch_all(fetcher.as_ref(), &blobs[0].desc, 0).await;
        assert_eq!(layer, blobs[0].bytes, "{host}");
    }
    // Plain HTTP is asked first: a plain registry never sees TLS, and one
    // question settles it for the resolver.
    assert_eq!(proxy.tls_handshakes(), 0);
    let asked = proxy.log().iter().filter(|l| *l == "GET /v2/").count();
    assert_eq!(asked, 1, "{:#?}", proxy.log());
    // Calls that start together wait for the one question.
    let together = FaultProxy::start(plain.addr()).unwrap();
    let resolver = DockerResolver::new();
    let reference = format!("{}/settled/app:1", together.host());
    let resolves = (0..4).map(|_| resolver.resolve(&reference));
    for resolved in futures::future::join_all(resolves).await {
        assert_eq!(resolved.unwrap().1.digest(), blobs[2].desc.digest());
    }
    let asked = together.log().iter().filter(|l| *l == "GET /v2/").count();
    assert_eq!(asked, 1, "{:#?}", together.log());

    // A plain registry answering 400 (as a TLS port answers plain HTTP) is
    // asked over TLS, and answers that in plain HTTP: plain HTTP it is.
    let odd = FaultProxy::start(plain.addr()).unwrap();
    let bad_request = Fault::Status {
        status: 400,
        retry_after: None,
    };
    odd.add(Some("GET"), "/v2/", 1, bad_request);
    let reference = format!("{}/settled/app:1", odd.host());
    let (_, desc) = DockerResolver::new().resolve(&reference).await.unwrap();
    assert_eq!(desc.digest(), blobs[2].desc.digest());
    assert_eq!(odd.tls_handshakes(), 1);

    // An `http://` host written with TLS settings (containerd's "bypass TLS
    // verification" example) is asked whether it speaks TLS: the TLS
    // registry over HTTPS, the plain one over plain HTTP.
    for (registry, expect_tls) in [(tls.host(), true), (proxy.host(), false)] {
        let hosts = tempfile::tempdir().unwrap();
        std::fs::create_dir(hosts.path().join(&registry)).unwrap();
        let hosts_toml = format!(
            "server = \"https://unused.invalid\"\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
        );
        std::fs::write(hosts.path().join(&registry).join("hosts.toml"), hosts_toml).unwrap();
        let handshakes = proxy.tls_handshakes();
        let (_, desc) = DockerResolver::new()
            .hosts_dir(hosts.path())
            .resolve(&format!("{registry}/settled/app:1"))
            .await
            .unwrap_or_else(|e| panic!("{registry}: {e:?}"));
        assert_eq!(desc.digest(), blobs[2].desc.digest());
        if !expect_tls {
            assert_eq!(
                proxy.tls_handshakes(),
                handshakes,
                "plain HTTP is asked first"
            );
        }
    }

    // The resolver's TLS settings count as a host's own (`ctr -k` or
    // `--tlscacert`): a written `http://` server that speaks TLS gets HTTPS.
    let hosts = tempfile::tempdir().unwrap();
    std::fs::create_dir(hosts.path().join(tls.host())).unwrap();
    let hosts_toml = format!("server = \"http://{}\"\n", tls.host());
    std::fs::write(hosts.path().join(tls.host()).join("hosts.toml"), hosts_toml).unwrap();
    let trusting = DockerResolver::new()
        .hosts_dir(hosts.path())
        .tls(std::slice::from_ref(&certs.ca), false)
        .unwrap();
    let (_, desc) = trusting
        .resolve(&format!("{}/settled/app:1", tls.host()))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(desc.digest(), blobs[2].desc.digest());

    // Certificates in a `certs.d` directory for an upstream taken as plain
    // HTTP (settled, or asked for everywhere) get HTTPS, checked, where the
    // registry speaks TLS, and leave one that speaks plain HTTP in plain
    // HTTP (a stale CA), as containerd falls back.
    let stranger = tempfile::tempdir().unwrap();
    let strangers = TestCertificates::write(stranger.path()).unwrap();
    for plain_http in [PlainHttp::Loopback, PlainHttp::Always] {
        let resolve_trusting = |registry: String, ca: std::path::PathBuf| async move {
            let certs_d = tempfile::tempdir().unwrap();
            std::fs::create_dir(certs_d.path().join(&registry)).unwrap();
            std::fs::copy(ca, certs_d.path().join(&registry).join("ca.crt")).unwrap();
            DockerResolver::new()
                .plain_http(plain_http)
                .hosts_dir(certs_d.path())
                .resolve(&format!("{registry}/settled/app:1"))
                .await
        };
        let handshakes = proxy.tls_handshakes();
        for (registry, ca) in [(tls.host(), &certs.ca), (proxy.host(), &strangers.ca)] {
            let (_, desc) = resolve_trusting(registry.clone(), ca.clone())
                .await
                .unwrap_or_else(|e| panic!("{plain_http:?} {registry}: {e:?}"));
            assert_eq!(desc.digest(), blobs[2].desc.digest());
        }
        assert_eq!(
            proxy.tls_handshakes(),
            handshakes,
            "plain HTTP is asked first"
        );
        let err = resolve_trusting(tls.host(), strangers.ca.clone())
            .await
            .unwrap_err();
        assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    }

    // Told how in hosts.toml: a `server` is used as written, and
    // `skip_verify = false` alone keeps the certificate checked; both
    // refuse a certificate from a CA nobody trusts.
    for hosts_toml in [
        format!("server = \"https://{}\"\n", tls.host()),
        "skip_verify = false\n".into(),
    ] {
        let err = refused_with_hosts_toml(&tls.host(), &hosts_toml).await;
        assert_eq!(
            err.kind(),
            ErrorKind::FailedPrecondition,
            "{hosts_toml}: {err}"
        );
        assert!(
            format!("{err:?}").contains("UnknownIssuer"),
            "{hosts_toml}: {err:?}"
        );
    }

    // Told HTTPS for a registry that speaks plain HTTP: the error says so.
    let hosts_toml = format!("server = \"https://{}\"\n", plain.host());
    let err = refused_with_hosts_toml(&plain.host(), &hosts_toml).await;
    let said = ocidist_content::Report::new(&err).to_string();
    assert!(said.contains("seems to speak plain HTTP"), "{said}");

    // A registry that wants a client certificate answers plain HTTP with a
    // 400 and refuses the handshake: it speaks TLS, and the error says what
    // the handshake lacked, not that plain HTTP went to a TLS port.
    let mtls = Registry::start_tls_requiring_client_certs(&certs)
        .expect("the registry must start with TLS (apt-get install docker-registry)");
    let err = DockerResolver::new()
        .resolve(&format!("{}/settled/app:1", mtls.host()))
        .await
        .unwrap_err();
    let said = format!("{err:?}");
    assert!(
        said.contains("https://")
            && (said.contains("CertificateRequired") || said.contains("BadCertificate")),
        "{said}"
    );
}

/// A registry that requires client certificates: refused with the CA alone;
/// served with the certificate given to the resolver, in a `hosts.toml`
/// (`client` pair, the `host_port_` directory form) or in Docker's
/// `certs.d` layout (`ca.crt`, `client.cert`, `client.key`).
#[tokio::test]
async fn client_certificates_from_every_place_users_keep_them() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCertificates::write(dir.path()).unwrap();
    let registry = Registry::start_tls_requiring_client_certs(&certs)
        .expect("the registry must start with TLS (apt-get install docker-registry)");
    let host = registry.host();
    let reference = format!("{host}/mtls/app:1");

    // TLS settings on the resolver: HTTPS for this loopback registry.
    let anonymous = DockerResolver::new()
        .tls(std::slice::from_ref(&certs.ca), false)
        .unwrap();
    // Refused by a TLS alert, however the race with the request goes (the
    // alert can close the connection before the request goes out).
    let err = anonymous.resolve(&reference).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(
        matches!(&err, Error::TlsAlert { alert, .. } if alert.contains("fatal alert")),
        "{err:?}"
    );

    let with_cert = anonymous
        .clone()
        .client_certificate(&certs.client_cert, Some(&certs.client_key))
        .unwrap();
    let blobs = image(false, "linux/amd64", 1000);
    push_all(with_cert.pusher(&reference).await.unwrap().as_ref(), &blobs).await;
    let (_, desc) = with_cert.resolve(&reference).await.unwrap();
    assert_eq!(desc.digest(), blobs[2].desc.digest());

    // Docker's certs.d: no hosts.toml, files by their extensions; they also
    // say that this loopback registry speaks TLS.
    let certs_d = tempfile::tempdir().unwrap();
    let host_dir = certs_d.path().join(&host);
    certs.write_docker_certs_dir(&host_dir).unwrap();
    let docker_layout = DockerResolver::new().hosts_dir(certs_d.path());
    let fetcher = docker_layout.fetcher(&reference).await.unwrap();
    let layer = fetch_all(fetcher.as_ref(), &blobs[0].desc, 0).await;
    assert_eq!(layer, blobs[0].bytes);
    // Without the client certificate the same directory is refused.
    std::fs::remove_file(host_dir.join("client.cert")).unwrap();
    let err = DockerResolver::new()
        .hosts_dir(certs_d.path())
        .resolve(&reference)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");

    // containerd's hosts.toml, in the `host_port_` directory, which is
    // looked at first; paths relative to the file.
    let hosts = tempfile::tempdir().unwrap();
    let (ip, port) = host.rsplit_once(':').unwrap();
    let toml_dir = hosts.path().join(format!("{ip}_{port}_"));
    std::fs::create_dir(&toml_dir).unwrap();
    for name in ["ca.pem", "client.pem", "client.key"] {
        std::fs::copy(dir.path().join(name), toml_dir.join(name)).unwrap();
    }
    let hosts_toml = |client: &str, extra: &str| {
        let text =
            format!("server = \"https://{host}\"\nca = \"ca.pem\"\nclient = {client}\n{extra}");
        std::fs::write(toml_dir.join("hosts.toml"), text).unwrap();
        DockerResolver::new().hosts_dir(hosts.path())
    };
    let containerd_layout = hosts_toml(
        r#"[["client.pem", "client.key"]]"#,
        "dial_timeout = \"5s\"\n",
    );
    let (_, desc) = containerd_layout.resolve(&reference).await.unwrap();
    assert_eq!(desc.digest(), blobs[2].desc.digest());

    // Several client certificates: the one from a CA the registry accepts
    // is presented, not merely the first (as Go, so Docker, chooses).
    let elsewhere = tempfile::tempdir().unwrap();
    let foreign = TestCertificates::write(elsewhere.path()).unwrap();
    std::fs::copy(&foreign.client_cert, toml_dir.join("foreign.pem")).unwrap();
    std::fs::copy(&foreign.client_key, toml_dir.join("foreign.key")).unwrap();
    let two_certs = hosts_toml(
        r#"[["foreign.pem", "foreign.key"], ["client.pem", "client.key"]]"#,
        "",
    );
    let (_, desc) = two_certs.resolve(&reference).await.unwrap();
    assert_eq!(desc.digest(), blobs[2].desc.digest());
    // The foreign one alone is refused, so it was not the one presented.
    let foreign_only = hosts_toml(r#"[["foreign.pem", "foreign.key"]]"#, "");
    let err = foreign_only.resolve(&reference).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");

    // A host's certificates come after the resolver's, as containerd adds
    // them to its defaults: the resolver's is presented where the host's
    // alone is refused.
    let (_, desc) = foreign_only
        .client_certificate(&certs.client_cert, Some(&certs.client_key))
        .unwrap()
        .resolve(&reference)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(desc.digest(), blobs[2].desc.digest());

    // A key that is no PEM is a configuration error naming the file.
    let broken_key = dir.path().join("broken.key");
    std::fs::write(&broken_key, "not a key").unwrap();
    let err = DockerResolver::new()
        .client_certificate(&certs.client_cert, Some(&broken_key))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("broken.key"), "{err}");
    // A key that is not the certificate's (rustls checks when building).
    let err = DockerResolver::new()
        .client_certificate(&certs.client_cert, Some(&certs.server_key))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let said = err.to_string();
    assert!(
        said.contains("client.pem") && said.contains("server.key"),
        "{said}"
    );
}

/// Pushes an image to `repo:1` and resolves it back, over HTTPS only,
/// trusting `ca` alone.
async fn push_and_resolve_trusting(ca: &std::path::Path, repo: &str) {
    let trusting = DockerResolver::new()
        .plain_http(PlainHttp::Never)
        .tls(&[ca.to_path_buf()], false)
        .unwrap();
    push_and_resolve(&trusting, repo).await;
}

/// Pushes an image to `repo:1` with `resolver` and resolves it back.
async fn push_and_resolve(trusting: &DockerResolver, repo: &str) {
    let blobs = image(false, "linux/amd64", 1000);
    let pusher = trusting.pusher(&format!("{repo}:1")).await.unwrap();
    push_all(pusher.as_ref(), &blobs).await;
    let (_, desc) = trusting.resolve(&format!("{repo}:1")).await.unwrap();
    assert_eq!(desc.digest(), blobs[2].desc.digest());
}
