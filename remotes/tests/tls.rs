//! HTTPS to the real registry with a certificate from a CA generated here:
//! refused without the CA, accepted with it.

mod common;

use std::path::Path;

use common::{image, push_all};
use ocidist_content::ErrorKind;
use ocidist_remotes::Resolver;
use ocidist_remotes::docker::{DockerResolver, PlainHttp};
use ocidist_remotes::testkit::Registry;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

/// Writes `ca.pem`, `server.pem` and `server.key` (for 127.0.0.1) into `dir`.
fn make_certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let server_cert = params.signed_by(&server_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
}

#[tokio::test]
async fn https_needs_the_ca_and_works_with_it() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let registry = Registry::start_tls(
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
    )
    .expect("the registry must start with TLS (apt-get install docker-registry)");
    let repo = format!("{}/tls/app", registry.host());

    let trusting = DockerResolver::new()
        .plain_http(PlainHttp::Never)
        .tls(&[dir.path().join("ca.pem")], false)
        .unwrap();
    let blobs = image(false, "linux/amd64", 1000);
    let pusher = trusting.pusher(&format!("{repo}:1")).await.unwrap();
    push_all(pusher.as_ref(), &blobs).await;
    let (_, desc) = trusting.resolve(&format!("{repo}:1")).await.unwrap();
    assert_eq!(desc.digest(), blobs[2].desc.digest());

    let stranger = DockerResolver::new().plain_http(PlainHttp::Never);
    let err = stranger.resolve(&format!("{repo}:1")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let chain = format!("{:?}", err);
    assert!(
        chain.to_lowercase().contains("certificate"),
        "the cause names the certificate: {chain}"
    );

    let careless = DockerResolver::new()
        .plain_http(PlainHttp::Never)
        .tls(&[], true)
        .unwrap();
    assert!(careless.resolve(&format!("{repo}:1")).await.is_ok());
}
