//! End-to-end tests of the local mesh (`weft up` / `weft demo`): real
//! weftd, weft-proxy sidecars with iptables capture, and the demo apps in
//! network namespaces. They need root and fail loudly without it.
//!
//! One mesh is shared by a sequence of checks (the demo plus a sidecar-less
//! namespace) to keep the suite short; request counts are bounded.

mod policies;
mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{TestMesh, WEFT, demo_copy, dns_a, edit, num, pods_of, versions_of};

/// A namespace without injection and a pod in it: plain traffic, the
/// node's NAT for VIPs and the node's cluster DNS.
const PLAIN: &str = "apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: bare, namespace: plain}
spec:
  selector: {matchLabels: {app: bare}}
  template:
    metadata: {labels: {app: bare}}
    spec:
      containers:
      - name: bare
        image: weft/demo-http
        args: [--listen, 0.0.0.0:8080]
        readinessProbe: {tcpSocket: {port: 8080}}
";

#[test]
fn demo_mesh_end_to_end() {
    let dir = demo_copy();
    std::fs::write(dir.path().join("plain.yaml"), PLAIN).unwrap();
    let mesh = TestMesh::up("e2e", dir.path());

    // --- DNS: short, namespaced and full names ---------------------------
    let vip = mesh.vip("demo", "reviews");
    let client_ns = mesh.netns_of("demo/client");
    let dns_capture = mesh.lock().as_ref().unwrap().dns_capture();
    if dns_capture {
        // The sidecar's DNS proxy on 15053 answers mesh names itself.
        let agent = SocketAddr::from(([127, 0, 0, 1], 15053));
        for name in ["reviews", "reviews.demo", "reviews.demo.svc.cluster.local"] {
            assert_eq!(
                dns_a(&client_ns, agent, name),
                Some(vip),
                "{name} via the sidecar's DNS proxy"
            );
        }
    }
    // What the app's resolver (glibc, the pod's resolv.conf) sees.
    for (pod, name) in [
        ("demo/client", "reviews"),
        ("demo/client", "reviews.demo"),
        ("demo/client", "reviews.demo.svc.cluster.local"),
        ("plain/bare", "reviews.demo"),
    ] {
        let (ok, out) = mesh.run(pod, "getent", &["hosts", name]);
        assert!(
            ok && out.starts_with(&vip.to_string()),
            "{pod}: getent hosts {name}: {out:?}"
        );
    }

    // --- the demo's routing, identities and policy -----------------------
    let main = mesh.load(
        "demo/client",
        &[
            "--url",
            "http://frontend:8080/",
            "--requests",
            "400",
            "--concurrency",
            "4",
        ],
    );
    assert_eq!(num(&main, "succeeded"), 400, "{main:#}");
    let split = versions_of(&main, "reviews");
    let v2 = *split.get("v2").unwrap_or(&0) as f64 / 400.0;
    // 90/10 over 400 calls: sd 1.5 points; 4 sd either side.
    assert!(
        (0.04..=0.16).contains(&v2),
        "reviews v2 share {v2} not near 10%: {split:?}"
    );
    let jason = mesh.load(
        "demo/client",
        &[
            "--url",
            "http://frontend:8080/",
            "--requests",
            "30",
            "-H",
            "end-user: jason",
        ],
    );
    assert_eq!(
        versions_of(&jason, "reviews").get("v2"),
        Some(&30),
        "{jason:#}"
    );
    for (k, v) in main["peers"].as_object().unwrap() {
        assert!(
            k.contains("<- spiffe://cluster.local/ns/demo/sa/"),
            "a hop reached its app without a verified peer: {k} ({v})"
        );
    }
    let denied = mesh.load(
        "demo/client",
        &[
            "--url",
            "http://reviews:9080/",
            "--requests",
            "10",
            "--concurrency",
            "1",
        ],
    );
    assert_eq!(
        denied["statuses"]["403"], 10,
        "client -> reviews must be denied: {denied:#}"
    );
    // STRICT: a pod without a sidecar (plaintext) is refused by ratings
    // (which has no AuthorizationPolicy: only mTLS can refuse it).
    let plain = mesh.load(
        "plain/bare",
        &[
            "--url",
            "http://ratings.demo:9080/",
            "--requests",
            "5",
            "--concurrency",
            "1",
        ],
    );
    assert_eq!(
        num(&plain, "succeeded"),
        0,
        "plaintext reached a STRICT workload: {plain:#}"
    );
    assert_eq!(num(&plain, "requests"), 5);

    // --- a config edit re-routes live traffic without failures ----------
    let edit_dir = dir.path().to_owned();
    let editor = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        edit(&edit_dir, "reviews-routing.yaml", |t| {
            t.replace("weight: 90", "weight: 0")
                .replace("weight: 10", "weight: 100")
        });
    });
    let during = mesh.load(
        "demo/client",
        &[
            "--url",
            "http://frontend:8080/",
            "--rate",
            "50",
            "--duration",
            "5",
            "--concurrency",
            "4",
        ],
    );
    editor.join().unwrap();
    assert_eq!(
        num(&during, "succeeded"),
        num(&during, "requests"),
        "failures during the edit: {during:#}"
    );
    let start = Instant::now();
    loop {
        let after = mesh.load(
            "demo/client",
            &["--url", "http://frontend:8080/", "--requests", "40"],
        );
        if versions_of(&after, "reviews").get("v2") == Some(&40) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "edit not applied: {after:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // --- scaling, then killing an app process ----------------------------
    edit(dir.path(), "ratings.yaml", |t| {
        t.replacen("replicas: 1", "replicas: 2", 1)
    });
    mesh.wait(Duration::from_secs(60), "ratings scaled to 2", |m| {
        m.plan()
            .pods
            .iter()
            .filter(|p| p.owner_name == "ratings-v1")
            .count()
            == 2
            && m.settled()
    });
    let (victim, pid) = {
        let guard = mesh.lock();
        let m = guard.as_ref().unwrap();
        let statuses = m.pod_statuses();
        let (key, st) = statuses
            .iter()
            .find(|(k, _)| k.starts_with("demo/ratings-v1-") && k.ends_with("-0"))
            .expect("ratings pod 0");
        let pid = st
            .pids
            .iter()
            .find(|(c, _)| c == "ratings")
            .map(|(_, p)| *p)
            .unwrap();
        (key.clone(), pid)
    };
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1000));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    });
    let across = mesh.load(
        "demo/client",
        &[
            "--url",
            "http://frontend:8080/",
            "--rate",
            "50",
            "--duration",
            "4",
            "--concurrency",
            "4",
        ],
    );
    killer.join().unwrap();
    let failures = num(&across, "requests") - num(&across, "succeeded");
    assert!(
        failures <= 10,
        "{failures} failures after killing {victim}'s app: {across:#}"
    );
    let events = mesh.events.lock().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|e| e.contains(&victim) && e.contains("endpoint withdrawn")),
        "{victim}'s endpoint was not withdrawn: {events:#?}"
    );
    // Every request after the kill went to the other replica until the
    // restart; the victim comes back (restart with backoff) and is ready.
    mesh.wait(
        Duration::from_secs(30),
        "the killed app restarted and ready",
        |m| {
            m.pod_statuses()
                .get(&victim)
                .is_some_and(|s| s.ready && s.restarts >= 1)
        },
    );
    let spread = pods_of(&across, "ratings");
    let total: u64 = spread.values().sum();
    let other: u64 = spread
        .iter()
        .filter(|(name, _)| !victim.ends_with(name.as_str()))
        .map(|(_, n)| n)
        .sum();
    assert!(
        other * 2 >= total,
        "traffic did not move to the other replica: {spread:?}"
    );

    // --- weftd dies: traffic keeps flowing; it restarts and resyncs ------
    let weftd = mesh
        .lock()
        .as_ref()
        .unwrap()
        .weftd_pid()
        .expect("weftd runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(weftd as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let without = mesh.load(
        "demo/client",
        &["--url", "http://frontend:8080/", "--requests", "50"],
    );
    assert_eq!(
        num(&without, "succeeded"),
        50,
        "traffic failed with weftd down: {without:#}"
    );
    mesh.wait(Duration::from_secs(30), "weftd restarted", |m| {
        m.weftd_pid().is_some_and(|p| p != weftd)
    });
    edit(dir.path(), "reviews-routing.yaml", |t| {
        t.replace("weight: 0", "weight: 100x")
            .replace("weight: 100\n", "weight: 0\n")
            .replace("weight: 100x", "weight: 100")
    });
    let start = Instant::now();
    loop {
        let after = mesh.load(
            "demo/client",
            &["--url", "http://frontend:8080/", "--requests", "40"],
        );
        if versions_of(&after, "reviews").get("v1") == Some(&40) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "restarted weftd did not resync the edit: {after:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // --- teardown ----------------------------------------------------------
    mesh.shutdown_and_check();
}

/// Bad input is reported precisely and the valid objects still run;
/// `weft down` removes what a killed `weft up` left.
#[test]
fn bad_input_and_crash_cleanup() {
    weft_testbed::require_root();
    support::binaries();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ok.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio-injection: enabled}}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: weft/demo-http, args: [--listen, 0.0.0.0:8080]}]\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: db, namespace: shop}\nspec:\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec:\n      containers: [{name: db, image: postgres:16}]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.yaml"), "kind: [oops\n").unwrap();
    let name = format!("bad{}", std::process::id() % 100_000);
    let mut up = UpProcess::start(&name, dir.path());
    let seen = up.read_until("  SERVICE");
    assert!(
        seen.contains("broken.yaml[doc 1]: not valid YAML"),
        "{seen}"
    );
    assert_eq!(
        seen.matches("broken.yaml").count(),
        1,
        "one error per problem:\n{seen}"
    );
    assert!(
        seen.contains("Deployment shop/db: spec.template.spec.containers[0].image: image \"postgres:16\" has no local program"),
        "{seen}"
    );
    assert!(
        seen.lines()
            .any(|l| l.contains("shop/web-") && l.contains("true")),
        "web must run:\n{seen}"
    );
    // `weft logs`: the app's output, and the sidecar's with -c proxy.
    let logs = |extra: &[&str]| {
        let out = Command::new(WEFT)
            .env_remove("CARGO")
            .args(["logs", "--name", &name, "web"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "weft logs {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let app_log = logs(&[]);
    assert!(
        app_log.contains("listening on 0.0.0.0:8080 (http)"),
        "{app_log}"
    );
    let proxy_log = logs(&["-c", "proxy"]);
    assert!(proxy_log.contains("weft-proxy"), "{proxy_log}");
    // `weft exec`: a command inside the pod sees the pod's address and name.
    let out = Command::new(WEFT)
        .env_remove("CARGO")
        .args([
            "exec",
            "--name",
            &name,
            "shop/web",
            "--",
            "sh",
            "-c",
            "ip -4 -o addr show eth0; hostname",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(" 10.88.0."),
        "{out:?}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("web-")),
        "hostname is the pod's name: {text}"
    );
    // A crash of `weft up` leaves everything behind; `weft down` clears it.
    up.kill();
    let prefix = weft_local::state::prefix(&name);
    let state = weft_local::state::MeshState::load(&name).expect("state of the crashed mesh");
    let pids: Vec<u32> = state
        .pods
        .iter()
        .flat_map(|p| p.pids.iter().map(|(_, p)| *p))
        .filter(|p| *p != 0)
        .collect();
    assert!(!pids.is_empty());
    let out = Command::new(WEFT)
        .env_remove("CARGO")
        .args(["down", "--name", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    support::assert_no_leftovers(&prefix, &name, &pids);
}

/// A `weft up` process; killed and cleaned up with `weft down` on drop.
struct UpProcess {
    name: String,
    child: Option<std::process::Child>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl UpProcess {
    fn start(name: &str, dir: &std::path::Path) -> UpProcess {
        let mut child = Command::new(WEFT)
            .env_remove("CARGO")
            .args(["up", "--name", name])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        UpProcess {
            name: name.to_owned(),
            child: Some(child),
            stdout,
        }
    }

    /// Output up to and including the first line containing `marker`.
    fn read_until(&mut self, marker: &str) -> String {
        use std::io::BufRead;
        let mut seen = String::new();
        let start = Instant::now();
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).unwrap_or(0);
            seen.push_str(&line);
            if line.contains(marker) {
                return seen;
            }
            assert!(
                n > 0 && start.elapsed() < Duration::from_secs(120),
                "weft up ended or hung before printing {marker:?}:\n{seen}"
            );
        }
    }

    /// SIGKILL: a crash, leaving everything behind.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
            let _ = weft_local::down(&self.name);
        }
    }
}

/// Without root, `weft up` and `weft demo` stop before doing anything and
/// say how to run them.
#[test]
fn commands_refuse_to_run_without_root() {
    weft_testbed::require_root();
    use std::os::unix::process::CommandExt;
    for args in [
        vec!["up", "--name", "nr", "/nonexistent"],
        vec!["demo", "--name", "nr"],
    ] {
        let out = Command::new(WEFT)
            .env_remove("CARGO")
            .args(&args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("needs root") && err.contains("sudo"),
            "{args:?}: {err}"
        );
        assert!(!std::path::Path::new("/run/netns/weft-nr-node").exists());
    }
}
