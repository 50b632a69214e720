//! Shared by the tests in `weftd_envoy_security.rs`: the test mesh's
//! workloads and config, starting weftd and Envoy sidecars in testbed pods,
//! the application, mTLS/plaintext HTTP clients and Envoy stats.

use super::*;

/// A child process killed (and reaped) on drop.
pub struct Killed(pub Child, pub &'static str);

impl Killed {
    pub fn assert_running(&mut self) {
        if let Some(status) = self.0.try_wait().expect("try_wait") {
            panic!("{} exited early with {status} (its log is above)", self.1);
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One workload of the test mesh (a Kubernetes Pod behind a Service).
pub struct Workload {
    pub app: &'static str,
    pub pod: &'static str,
    pub sa: &'static str,
    pub vip: &'static str,
    pub ip: String,
}

impl Workload {
    pub fn reviews(ip: &str) -> Workload {
        Workload {
            app: "reviews",
            pod: "reviews-v1-545db77b95-2ps7q",
            sa: "bookinfo-reviews",
            vip: "10.96.0.20",
            ip: ip.to_string(),
        }
    }

    pub fn productpage(ip: &str) -> Workload {
        Workload {
            app: "productpage",
            pod: "productpage-v1-6b746f74dc-9stvs",
            sa: "productpage",
            vip: "10.96.0.10",
            ip: ip.to_string(),
        }
    }

    pub fn yaml(&self) -> String {
        let Workload {
            app,
            pod,
            sa,
            vip,
            ip,
        } = self;
        format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: {app}, namespace: default, labels: {{app: {app}}}}}
spec:
  clusterIP: {vip}
  selector: {{app: {app}}}
  ports:
  - {{name: http, port: {PORT}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: {pod}
  namespace: default
  labels: {{app: {app}, version: v1, security.istio.io/tlsMode: istio}}
spec:
  serviceAccountName: {sa}
  containers: [{{name: {app}, ports: [{{containerPort: {PORT}}}]}}]
status: {{phase: Running, podIP: {ip}}}
---
"#
        )
    }
}

/// The mesh (`workloads`), a mesh-wide PeerAuthentication `mtls_mode`,
/// and reviews' policies: DENY `/admin/*`, ALLOW only productpage's
/// identity.
pub fn config(dir: &Path, workloads: &[&Workload], mtls_mode: &str) {
    let mesh: String = workloads.iter().map(|w| w.yaml()).collect();
    let peer = format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: istio-system}}\nspec:\n  mtls: {{mode: {mtls_mode}}}\n"
    );
    let security = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector:
    matchLabels: {app: reviews}
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin/*"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-only, namespace: default}
spec:
  selector:
    matchLabels: {app: reviews}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/productpage]}
"#;
    std::fs::write(dir.join("mesh.yaml"), mesh).expect("write mesh.yaml");
    std::fs::write(dir.join("security.yaml"), security).expect("write security.yaml");
    std::fs::write(dir.join("peer.yaml"), peer).expect("write peer.yaml");
}

pub fn start_weftd(pod: &Pod, work: &Path, xds: &str) -> Killed {
    let mut child = pod
        .command(env!("CARGO_BIN_EXE_weftd"))
        .expect("command in pod")
        .arg("--config")
        .arg(format!("file://{}", work.join("config").display()))
        .args(["--xds-addr", xds, "--monitoring-addr", "127.0.0.1:15014"])
        .args(["--xds-tls-addr", "127.0.0.1:15012"])
        .args(["--webhook-addr", "127.0.0.1:15017"])
        .args(["--ready-addr", "127.0.0.1:8080", "--debounce-ms", "50"])
        .arg("--ca-dir")
        .arg(work.join("ca"))
        .arg("--bootstrap-tokens")
        .arg(work.join("tokens.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start weftd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read weftd's address line");
    assert!(line.contains("xds-addr="), "weftd printed {line:?}");
    Killed(child, "weftd")
}

/// Envoy as `w`'s sidecar: node metadata as Istio's agent sends it, ADS
/// to weftd at `xds`, `sds-grpc` to the agent SDS at `sds`.
pub fn start_envoy(
    pod: &Pod,
    work: &Path,
    w: &Workload,
    xds: SocketAddr,
    sds: SocketAddr,
) -> Killed {
    let bootstrap = serde_json::json!({
        "node": {
            "id": format!("sidecar~{}~{}.default~default.svc.cluster.local", w.ip, w.pod),
            "cluster": format!("{}.default", w.app),
            "metadata": {
                "NAMESPACE": "default",
                "INSTANCE_IPS": w.ip,
                "SERVICE_ACCOUNT": w.sa,
                "WORKLOAD_NAME": format!("{}-v1", w.app),
                "ISTIO_VERSION": "1.24.0",
                "CLUSTER_ID": "Kubernetes",
                "INTERCEPTION_MODE": "REDIRECT",
                "LABELS": {"app": w.app, "version": "v1", "security.istio.io/tlsMode": "istio"}
            }
        },
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": ADMIN}}},
        "dynamicResources": {
            "adsConfig": {"apiType": "GRPC", "transportApiVersion": "V3",
                          "grpcServices": [{"envoyGrpc": {"clusterName": "xds-grpc"}}]},
            "ldsConfig": {"ads": {}, "resourceApiVersion": "V3"},
            "cdsConfig": {"ads": {}, "resourceApiVersion": "V3"}
        },
        "staticResources": {"clusters": [{
            "name": "xds-grpc", "type": "STATIC", "connectTimeout": "1s",
            "loadAssignment": {"clusterName": "xds-grpc", "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": xds.ip().to_string(), "portValue": xds.port()}}}}]}]},
            "typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicitHttpConfig": {"http2ProtocolOptions": {}}}}
        }, support::sds_grpc_cluster(sds)]}
    });
    let path = work.join(format!("envoy-{}.json", w.app));
    std::fs::write(&path, bootstrap.to_string()).expect("write bootstrap");
    let child = pod
        .command("envoy")
        .expect("command in pod")
        .args(["--use-dynamic-base-id", "--log-level", "warn", "-c"])
        .arg(&path)
        .spawn()
        .expect("start envoy");
    Killed(child, "envoy")
}

/// The application: answers every request with its path and the
/// `x-forwarded-client-cert` it received.
pub async fn serve_app(listener: tokio::net::TcpListener) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let xfcc = req
                        .headers()
                        .get("x-forwarded-client-cert")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let body = format!("path={}\nxfcc={xfcc}\n", req.uri().path());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        body,
                    ))))
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub fn client_config(root: &CertificateDer<'static>, cert: &AgentSecrets) -> rustls::ClientConfig {
    let trust =
        MeshTrust::new(std::slice::from_ref(root), vec!["cluster.local".into()]).expect("trust");
    let expected = vec![SpiffeId::parse(SERVER_ID).expect("id")];
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(trust, expected)))
        .with_client_auth_cert(
            CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("chain"),
            PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key"),
        )
        .expect("client cert");
    // What a sidecar's ISTIO_MUTUAL HTTP/1.1 cluster offers.
    config.alpn_protocols = vec![
        b"istio-peer-exchange".to_vec(),
        b"istio".to_vec(),
        b"http/1.1".to_vec(),
    ];
    config
}

/// `(status, body)` of one request, `Err` when the connection is refused
/// or closed without a response.
pub async fn get<S>(mut stream: S, path: &str) -> std::io::Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = format!("GET {path} HTTP/1.1\r\nHost: reviews:{PORT}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
    if let Ok(Err(e)) = read
        && raw.is_empty()
    {
        return Err(e);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!("no HTTP response: {text:?}"),
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

pub async fn mtls_get(
    target: SocketAddr,
    config: &rustls::ClientConfig,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(target).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config.clone()))
        .connect(
            ServerName::try_from("reviews.default.svc").expect("sni"),
            tcp,
        )
        .await?;
    get(tls, path).await
}

/// Envoy's admin `/stats` as (name, value) counters, over `conn` (a
/// connection to the admin port).
pub async fn stats_over(conn: std::io::Result<tokio::net::TcpStream>) -> Vec<(String, u64)> {
    let Ok(mut s) = conn else {
        return Vec::new();
    };
    let _ = s
        .write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.lines()
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

pub fn counter(stats: &[(String, u64)], name: &str) -> u64 {
    stats.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v)
}

pub async fn secrets(ca: &mut CaClient, tokens: &[(&str, String)], id: &str) -> AgentSecrets {
    let token = tokens
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, t)| t.as_str());
    fetch_secrets(ca, &SpiffeId::parse(id).expect("id"), token, 3600)
        .await
        .unwrap_or_else(|e| panic!("certificate for {id}: {e}"))
}

/// A TCP connection made from inside `pod` (its namespace's routes and
/// capture rules apply), usable from any thread's runtime.
pub fn connect_in(pod: &Pod, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let std = pod
        .enter(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .map_err(std::io::Error::other)??;
    std.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std)
}

/// Asserts an Envoy's stats show LDS/CDS applied and nothing rejected.
pub fn assert_accepted(who: &str, s: &[(String, u64)]) {
    assert!(
        counter(s, "listener_manager.lds.update_success") > 0
            && counter(s, "cluster_manager.cds.update_success") > 0,
        "{who}: LDS/CDS not applied: {s:?}"
    );
    let rejected: Vec<_> = s
        .iter()
        .filter(|(k, v)| k.ends_with("update_rejected") && *v > 0)
        .collect();
    assert!(rejected.is_empty(), "{who} rejected updates: {rejected:?}");
}

/// The server pod of the server-sidecar scenarios: the application's
/// address (`APP_IP`) on `lo` and, as istio-iptables does for inbound
/// traffic, the pod address's `PORT` redirected to 15006. Returns the pod
/// and the address clients call.
pub fn server_pod(node: &Node, name: &str) -> (Pod, SocketAddr) {
    let pod = node.add_pod(name).expect("testbed pod");
    pod.netns()
        .ip(&["addr", "add", &format!("{APP_IP}/32"), "dev", "lo"])
        .expect("application address on lo");
    let service_ip = pod.addr().to_string();
    let out = pod
        .command("iptables")
        .expect("command in pod")
        .args(["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", &service_ip])
        .args([
            "--dport",
            &PORT.to_string(),
            "-j",
            "REDIRECT",
            "--to-ports",
            "15006",
        ])
        .output()
        .expect("iptables");
    assert!(
        out.status.success(),
        "iptables: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = SocketAddr::from((pod.addr(), PORT));
    (pod, target)
}

/// weftd's CA client on the plaintext xDS port, retried until weftd
/// answers (within `BOUND`, while `weftd` keeps running).
pub async fn ca_client(weftd: &mut Killed) -> CaClient {
    let deadline = Instant::now() + BOUND;
    loop {
        match CaClient::connect(&format!("http://{XDS}")).await {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => {
                weftd.assert_running();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("weftd's CA never answered: {e}"),
        }
    }
}

/// The policy decisions every server sidecar must make under the test
/// mesh's AuthorizationPolicies, whatever the proxy: once an allowed mTLS
/// request is served (waited for within `BOUND`, while `running` keep
/// running), the application sees the caller's SPIFFE ID in XFCC, DENY
/// wins over ALLOW (`/admin/users` is 403 `RBAC: access denied`), and
/// another identity is refused. Returns the plaintext request's outcome,
/// which depends on the PeerAuthentication mode.
pub async fn assert_policy_decisions(
    target: SocketAddr,
    allowed: &rustls::ClientConfig,
    other: &rustls::ClientConfig,
    running: &mut [&mut Killed],
) -> std::io::Result<(u16, String)> {
    let deadline = Instant::now() + BOUND;
    let body = loop {
        match mtls_get(target, allowed, "/reviews/1").await {
            Ok((200, body)) => break body,
            _ if Instant::now() < deadline => {
                for p in running.iter_mut() {
                    p.assert_running();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            last => panic!("allowed mTLS request never succeeded: {last:?}"),
        }
    };
    assert!(body.contains("path=/reviews/1"), "{body}");
    assert!(
        body.contains(&format!("URI={ALLOWED_ID}")) && body.contains(&format!("By={SERVER_ID}")),
        "the application sees the caller's SPIFFE id in XFCC: {body}"
    );
    // DENY wins over ALLOW.
    let (status, body) = mtls_get(target, allowed, "/admin/users")
        .await
        .expect("admin");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("RBAC: access denied"), "{body}");
    // Another identity is not in the ALLOW policy.
    let (status, body) = mtls_get(target, other, "/reviews/1").await.expect("other");
    assert_eq!(status, 403, "{body}");
    match tokio::net::TcpStream::connect(target).await {
        Ok(s) => get(s, "/reviews/1").await,
        Err(e) => Err(e),
    }
}
