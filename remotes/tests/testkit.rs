//! The registry test kit starts the real registry and stops it.

use ocidist_remotes::testkit::{Registry, get_status};

#[test]
fn registry_serves_on_loopback_and_stops_when_dropped() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    assert!(registry.host().starts_with("127.0.0.1:"));
    assert_eq!(get_status(registry.addr(), "/v2/").unwrap(), 200);
    assert_eq!(
        get_status(registry.addr(), "/v2/no/such/manifests/latest").unwrap(),
        404
    );
    let addr = registry.addr();
    let pid = registry.pid();
    drop(registry);
    assert!(
        get_status(addr, "/v2/").is_err(),
        "the registry must be gone after drop"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} must be reaped"
    );
}

#[test]
fn a_missing_registry_names_the_package_to_install() {
    let err = Registry::start_binary(std::path::Path::new("/nonexistent/docker-registry"), "")
        .unwrap_err();
    assert!(
        err.to_string().contains("apt-get install docker-registry"),
        "{err}"
    );
}

#[test]
fn two_registries_run_side_by_side() {
    let a = Registry::start().unwrap();
    let b = Registry::start().unwrap();
    assert_ne!(a.addr(), b.addr());
    assert_ne!(a.dir(), b.dir());
}
