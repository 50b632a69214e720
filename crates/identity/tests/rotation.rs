//! Certificate rotation: new handshakes get the new certificate, established
//! streams keep working, failures keep the old certificate. No wall-clock
//! assertions: rotation is driven explicitly or by tokio's paused clock.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use common::{connect, echo, echo_server, id, trust};
use weft_identity::workload::{ProvideFuture, WorkloadCertError};
use weft_identity::{
    CertificateAuthority, CertificateManager, CertificateProvider, LocalCertificateProvider,
    RotationPolicy, SpiffeId,
};

fn leaf_serial(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .unwrap()
        .1
        .raw_serial_as_string()
}

#[tokio::test]
async fn rotation_serves_new_cert_to_new_handshakes_and_keeps_old_streams() {
    let ca = Arc::new(CertificateAuthority::generate_self_signed("cluster.local").unwrap());
    let mesh = trust(&ca);
    let server = common::manager(&ca, id("default", "reviews")).await;
    let client = common::manager(&ca, id("default", "productpage")).await;
    let (addr, mut accepted) = echo_server(Arc::clone(&server), &mesh, vec![]).await;

    let mut long_lived = connect(addr, Arc::clone(&client), &mesh, vec![])
        .await
        .unwrap();
    assert_eq!(echo(&mut long_lived, b"before").await.unwrap(), b"before");
    let first_serial = leaf_serial(&long_lived.get_ref().1.peer_certificates().unwrap()[0]);
    assert_eq!(first_serial, server.current().serial);
    accepted.recv().await.unwrap().result.unwrap();

    let mut generation = server.subscribe();
    let rotated = server.rotate().await.unwrap();
    assert!(generation.has_changed().unwrap());
    assert_eq!(*generation.borrow_and_update(), 1);
    assert_ne!(rotated.serial, first_serial);
    client.rotate().await.unwrap();

    // The established stream is untouched.
    assert_eq!(echo(&mut long_lived, b"during").await.unwrap(), b"during");

    // A new handshake sees the new certificate.
    let mut fresh = connect(addr, Arc::clone(&client), &mesh, vec![])
        .await
        .unwrap();
    assert_eq!(echo(&mut fresh, b"new").await.unwrap(), b"new");
    let fresh_serial = leaf_serial(&fresh.get_ref().1.peer_certificates().unwrap()[0]);
    assert_eq!(fresh_serial, rotated.serial);
    assert_eq!(accepted.recv().await.unwrap().result.unwrap(), *client.id());

    assert_eq!(echo(&mut long_lived, b"after").await.unwrap(), b"after");
}

#[test]
fn refresh_point_is_half_life_within_jitter() {
    let policy = RotationPolicy::default();
    let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let na = nb + Duration::from_secs(24 * 3600);
    assert_eq!(
        policy.refresh_at(nb, na, 0.0),
        nb + Duration::from_secs(12 * 3600)
    );
    let lo = policy.refresh_at(nb, na, -1.0);
    let hi = policy.refresh_at(nb, na, 1.0);
    assert_eq!(lo, nb + Duration::from_secs(24 * 3600).mul_f64(0.45));
    assert_eq!(hi, nb + Duration::from_secs(24 * 3600).mul_f64(0.55));
    // Out-of-range draws are clamped.
    assert_eq!(policy.refresh_at(nb, na, 7.0), hi);
}

#[tokio::test(start_paused = true)]
async fn background_task_rotates_at_half_life() {
    let ca = Arc::new(CertificateAuthority::generate_self_signed("cluster.local").unwrap());
    let provider = Arc::new(LocalCertificateProvider::new(
        Arc::clone(&ca),
        Duration::from_secs(24 * 3600),
    ));
    let manager = CertificateManager::new(
        id("default", "reviews"),
        provider,
        RotationPolicy::default(),
    )
    .await
    .unwrap();
    let first = manager.current();
    let mut generation = manager.subscribe();
    let task = manager.spawn_rotation();
    let start = tokio::time::Instant::now();
    generation.changed().await.unwrap();
    // Virtual time, not wall-clock: the task slept until ~half of 24 h.
    let slept = start.elapsed();
    assert!(
        slept >= Duration::from_secs(10 * 3600) && slept <= Duration::from_secs(14 * 3600),
        "{slept:?}"
    );
    assert_ne!(manager.current().serial, first.serial);
    generation.changed().await.unwrap();
    assert_eq!(*generation.borrow(), 2);
    task.abort();
}

/// Fails while `down` is set, otherwise signs locally.
struct FlakyProvider {
    inner: LocalCertificateProvider,
    down: AtomicBool,
}

impl CertificateProvider for FlakyProvider {
    fn create_certificate<'a>(
        &'a self,
        id: &'a SpiffeId,
        csr: &'a str,
        ttl: Option<Duration>,
    ) -> ProvideFuture<'a> {
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async move {
                Err(WorkloadCertError::Provider {
                    id: id.to_string(),
                    reason: "CA unreachable".into(),
                })
            });
        }
        self.inner.create_certificate(id, csr, ttl)
    }
}

#[tokio::test(start_paused = true)]
async fn ca_outage_keeps_the_current_certificate_and_retries() {
    let ca = Arc::new(CertificateAuthority::generate_self_signed("cluster.local").unwrap());
    let provider = Arc::new(FlakyProvider {
        inner: LocalCertificateProvider::new(Arc::clone(&ca), Duration::from_secs(24 * 3600)),
        down: AtomicBool::new(false),
    });
    let manager = CertificateManager::new(
        id("default", "reviews"),
        provider.clone(),
        RotationPolicy::default(),
    )
    .await
    .unwrap();
    let first = manager.current();
    provider.down.store(true, Ordering::SeqCst);
    let err = manager.rotate().await.unwrap_err();
    assert!(err.to_string().contains("CA unreachable"), "{err}");
    assert_eq!(
        manager.current().serial,
        first.serial,
        "old certificate keeps serving"
    );

    let mut generation = manager.subscribe();
    let task = manager.spawn_rotation();
    // Let the task reach its refresh point and fail a few times with backoff.
    tokio::time::sleep(Duration::from_secs(13 * 3600)).await;
    assert_eq!(*generation.borrow(), 0);
    assert_eq!(manager.current().serial, first.serial);
    provider.down.store(false, Ordering::SeqCst);
    generation.changed().await.unwrap();
    assert_ne!(manager.current().serial, first.serial);
    task.abort();
}
