//! Shared pieces of the local-mesh end-to-end tests: building the binaries
//! the runtime launches, a mesh stepped on a background thread (shut down
//! on drop, also while a test panics), loads from a pod, DNS queries, and
//! the teardown check.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_local::{Mesh, UpOptions};

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// Makes sure weftd and weft-proxy sit next to the `weft` under test
/// (contract 6), building them with the same profile if needed, and points
/// the runtime there.
pub fn binaries() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(WEFT)
            .parent()
            .expect("weft has a directory")
            .to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "-p",
            "weft-control",
            "--bin",
            "weftd",
            "-p",
            "weft-proxy",
            "--bin",
            "weft-proxy",
        ]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for weftd and weft-proxy");
        if !status.success() {
            // `cargo nextest run --workspace` has built them already; a
            // failing rebuild here (e.g. a crate mid-edit) falls back to those.
            eprintln!(
                "warning: cargo build of weftd and weft-proxy failed; using the binaries in {}",
                dir.display()
            );
        }
        for bin in ["weftd", "weft-proxy", "weft"] {
            assert!(
                dir.join(bin).exists(),
                "{} missing after the build",
                dir.join(bin).display()
            );
        }
        check_search_dir(&dir);
        dir
    })
    .clone()
}

fn check_search_dir(dir: &Path) {
    // The runtime also finds binaries next to the test executable's parent
    // (target/debug for target/debug/deps/...), which is where they are.
    assert!(
        weft_local::bins::search_dirs().iter().any(|d| d == dir),
        "the runtime would not look in {}",
        dir.display()
    );
}

/// The repository's examples/demo.
pub fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo")
}

/// Copies examples/demo into a fresh temporary directory.
pub fn demo_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(demo_dir()).expect("examples/demo") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).expect("copy");
        }
    }
    tmp
}

/// A mesh stepped by a background thread; shut down on drop.
pub struct TestMesh {
    pub name: String,
    pub prefix: String,
    mesh: Arc<Mutex<Option<Mesh>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub events: Arc<Mutex<Vec<String>>>,
}

impl TestMesh {
    pub fn up(tag: &str, dir: &Path) -> TestMesh {
        weft_testbed::require_root();
        binaries();
        let name = format!("{tag}{}", std::process::id() % 100_000);
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let report: weft_local::Report = Arc::new(move |line: &str| {
            eprintln!("[mesh] {line}");
            sink.lock().unwrap().push(line.to_owned());
        });
        let mesh = Mesh::up(UpOptions::new(&name, dir), report).expect("weft up");
        let mesh = Arc::new(Mutex::new(Some(mesh)));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (Arc::clone(&mesh), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Some(mesh) = m.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
                    && let Err(e) = mesh.step()
                {
                    eprintln!("[mesh] step: {e}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let t = TestMesh {
            prefix: weft_local::state::prefix(&name),
            name,
            mesh,
            stop,
            thread: Some(thread),
            events,
        };
        t.wait(
            Duration::from_secs(180),
            "every pod ready and published",
            |m| m.settled(),
        );
        t
    }

    pub fn lock(&self) -> MutexGuard<'_, Option<Mesh>> {
        self.mesh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `cond` holds (checked under the lock), or panics.
    pub fn wait(&self, limit: Duration, what: &str, cond: impl Fn(&Mesh) -> bool) {
        let start = Instant::now();
        loop {
            if cond(self.lock().as_ref().expect("mesh running")) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for: {what}; events: {:#?}",
                self.events.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `weft app load --json ARGS` in `pod` and returns its summary.
    pub fn load(&self, pod: &str, args: &[&str]) -> Value {
        let mut cmd = self
            .lock()
            .as_ref()
            .expect("mesh running")
            .pod_command(pod, "weft")
            .expect("pod command");
        let out = cmd
            .args(["app", "load", "--json"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run weft app load in the pod");
        assert!(
            out.status.success(),
            "weft app load {args:?} in {pod}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "load summary: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs `program args` in `pod`; returns (success, stdout).
    pub fn run(&self, pod: &str, program: &str, args: &[&str]) -> (bool, String) {
        let mut cmd = self
            .lock()
            .as_ref()
            .expect("mesh running")
            .pod_command(pod, program)
            .expect("pod command");
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run in pod");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// The VIP of service `ns/name`.
    pub fn vip(&self, ns: &str, name: &str) -> Ipv4Addr {
        self.lock()
            .as_ref()
            .unwrap()
            .plan()
            .service(ns, name)
            .and_then(|s| s.vip)
            .unwrap_or_else(|| panic!("no VIP for {ns}/{name}"))
    }

    /// The network namespace file of the pod whose name starts with `prefix-`.
    pub fn netns_of(&self, prefix: &str) -> PathBuf {
        let state = weft_local::state::MeshState::load(&self.name).expect("state");
        state.find_pod(prefix).expect("pod").netns.clone()
    }

    /// Shuts the mesh down and checks that nothing is left.
    pub fn shutdown_and_check(mut self) {
        let pids = self.all_pids();
        self.stop_thread();
        if let Some(mesh) = self.lock().take() {
            mesh.shutdown();
        }
        assert_no_leftovers(&self.prefix, &self.name, &pids);
    }

    /// Every pid the mesh runs (weftd and all containers).
    pub fn all_pids(&self) -> Vec<u32> {
        let guard = self.lock();
        let mesh = guard.as_ref().expect("mesh running");
        let mut pids: Vec<u32> = mesh
            .pod_statuses()
            .values()
            .flat_map(|s| s.pids.iter().map(|(_, p)| *p))
            .filter(|p| *p != 0)
            .collect();
        pids.extend(mesh.weftd_pid());
        pids
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestMesh {
    fn drop(&mut self) {
        self.stop_thread();
        if let Some(mesh) = self.lock().take() {
            mesh.shutdown();
        }
    }
}

/// No namespace with `prefix`, no state directory, none of `pids` alive.
pub fn assert_no_leftovers(prefix: &str, name: &str, pids: &[u32]) {
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert!(
        !weft_local::state::dir(name).exists(),
        "state directory left behind"
    );
    let alive: Vec<&u32> = pids
        .iter()
        .filter(|p| {
            // A zombie is gone for our purposes; anything else is a leak.
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
        })
        .collect();
    assert!(alive.is_empty(), "processes left behind: {alive:?}");
}

/// Number of replies from `app` pods per version in a load summary.
pub fn versions_of(summary: &Value, app: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in summary["downstream"].as_object().into_iter().flatten() {
        if let Some((name, version)) = k.rsplit_once(' ')
            && name.starts_with(&format!("{app}-"))
        {
            *out.entry(version.to_owned()).or_default() += v.as_u64().unwrap_or(0);
        }
    }
    out
}

/// Replies per pod name (`names` and nested `downstream`) for pods of `app`.
pub fn pods_of(summary: &Value, app: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in summary["downstream"].as_object().into_iter().flatten() {
        if let Some((name, _)) = k.rsplit_once(' ')
            && name.starts_with(&format!("{app}-"))
        {
            *out.entry(name.to_owned()).or_default() += v.as_u64().unwrap_or(0);
        }
    }
    out
}

pub fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// An A query for `name` to `server` from inside `netns`; the answer's
/// first address.
pub fn dns_a(netns: &Path, server: SocketAddr, name: &str) -> Option<Ipv4Addr> {
    let file = std::fs::File::open(netns).expect("netns");
    let name = name.to_owned();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
        sock.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        sock.send_to(&q, server).ok()?;
        let mut buf = [0u8; 1500];
        let n = sock.recv(&mut buf).ok()?;
        let answers = u16::from_be_bytes([buf[6], buf[7]]);
        if answers == 0 || n < 4 {
            return None;
        }
        // The first answer's RDATA is at the end for a single A answer.
        let a = &buf[n - 4..n];
        Some(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    })
    .join()
    .expect("dns thread")
}

/// Rewrites `file` in `dir` with `edit` applied to its text.
pub fn edit(dir: &Path, file: &str, edit: impl Fn(&str) -> String) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).expect("read manifest");
    let new = edit(&text);
    assert_ne!(text, new, "edit of {file} changed nothing");
    std::fs::write(&path, new).expect("write manifest");
}
