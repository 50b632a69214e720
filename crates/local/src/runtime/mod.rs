//! The runtime shell: runs a [`Plan`] on this machine and keeps it in step
//! with the manifests directory.
//!
//! [`Mesh::up`] checks for root, creates the node namespace, starts weftd
//! on it, plans the manifests and starts every pod. [`Mesh::step`] is one
//! reconcile pass (call it in a loop): it restarts weftd if it died,
//! re-plans when a manifest changed (new routing reaches weftd at once,
//! scaling adds or removes pods, a changed pod template replaces its
//! pods), publishes ready pods as endpoints and withdraws unready ones,
//! updates the node's Service NAT and DNS, and records the state for
//! `weft down/exec/logs`. [`Mesh::shutdown`] stops everything and deletes
//! every namespace. [`down`] removes what a crashed `weft up` left.

mod mirror;
mod node;
mod pod;
mod process;
mod publish;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::container::Role;
use crate::error::{Error, PlanError, Result};
use crate::image::Program;
use crate::plan::{Plan, PlanOptions, plan_files};
use crate::state::{self, MeshState};
use crate::{bins, dns, manifest};

pub use node::{MONITORING_PORT, XDS_PORT, XDS_TLS_PORT};
pub use pod::PodStatus;

use mirror::Mirror;
use node::NodeRuntime;
use pod::{PodEnv, PodRuntime};

/// The proxy's uid/gid (Istio's 1337).
pub const PROXY_UID: u32 = 1337;

/// Settings of `weft up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The mesh name: namespaces are `weft-<name>-*`, state in `/run/weft/<name>`.
    pub name: String,
    /// The manifests directory.
    pub manifests: PathBuf,
    /// The node's /24 (base address).
    pub subnet: Ipv4Addr,
    /// DNS capture by the sidecars: `None` turns it on when weft-proxy has
    /// Istio's DNS proxy.
    pub dns_capture: Option<bool>,
}

impl UpOptions {
    /// Defaults for mesh `name` and manifests `dir`.
    pub fn new(name: impl Into<String>, manifests: impl Into<PathBuf>) -> Self {
        UpOptions {
            name: name.into(),
            manifests: manifests.into(),
            subnet: Ipv4Addr::new(10, 88, 0, 0),
            dns_capture: None,
        }
    }
}

/// A progress sink (`weft up` prints; tests collect).
pub type Report = Arc<dyn Fn(&str) + Send + Sync>;

/// Fails unless running as root, naming the command and how to run it.
pub fn require_root(command: &str) -> Result<()> {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot {
            command: command.to_owned(),
            euid: euid.as_raw(),
        })
    }
}

/// A running local mesh.
pub struct Mesh {
    opts: UpOptions,
    report: Report,
    dir: PathBuf,
    node: NodeRuntime,
    mirror: Mirror,
    plan: Plan,
    plan_opts: PlanOptions,
    files: BTreeMap<String, String>,
    reported_errors: BTreeSet<String>,
    pods: BTreeMap<String, PodRuntime>,
    netns_names: BTreeSet<String>,
    tokens: weft_identity::TokenStore,
    programs: BTreeMap<String, PathBuf>,
    published: BTreeMap<String, bool>,
    last_state: String,
    last_scan: Instant,
    last_change: Instant,
    dns_capture: bool,
}

impl Mesh {
    /// Starts the mesh: node, weftd, every pod of the manifests.
    pub fn up(opts: UpOptions, report: Report) -> Result<Mesh> {
        require_root("weft up")?;
        let weftd = bins::find("weftd")?;
        let proxy = bins::find("weft-proxy")?;
        let weft = bins::find("weft")?;
        let prefix = state::prefix(&opts.name);
        if let Ok(running) = MeshState::load(&opts.name)
            && running.pid != std::process::id()
            && Path::new(&format!("/proc/{}", running.pid)).exists()
        {
            return Err(Error::AlreadyRunning(format!(
                "mesh {:?} is already running (weft up pid {}); give another --name, or stop it with `weft down --name {}`",
                opts.name, running.pid, opts.name
            )));
        }
        // A crashed run of the same name leaves namespaces behind: clear them.
        let leftovers = weft_testbed::cleanup_prefix(&prefix)?;
        if !leftovers.is_empty() {
            report(&format!(
                "removed {} namespaces left by an earlier run of mesh {:?}",
                leftovers.len(),
                opts.name
            ));
        }
        let dir = state::dir(&opts.name);
        let _ = std::fs::remove_dir_all(&dir);
        for d in [dir.clone(), dir.join("pods")] {
            std::fs::create_dir_all(&d).map_err(|source| Error::Io { path: d, source })?;
        }
        // Proxies (uid 1337) read their token and the root cert below it.
        set_mode(&dir, 0o755)?;
        set_mode(Path::new(state::STATE_ROOT), 0o755)?;
        let tokens = weft_identity::TokenStore::new();
        tokens.save(&dir.join("tokens.json"))?;
        let mirror = Mirror::new(dir.join("weftd-config"))?;
        let dns_capture = opts
            .dns_capture
            .unwrap_or_else(|| bins::proxy_has_dns(&proxy));
        report(&format!(
            "starting node {}node ({}/24) and weftd",
            prefix, opts.subnet
        ));
        let node = NodeRuntime::start(&prefix, opts.subnet, weftd, mirror.dir().to_owned(), &dir)?;
        let gw = node.gateway;
        // Sidecars reach weftd as Istio's reach istiod: xDS and the CA over
        // mutual TLS on 15012 (weftd's certificate carries the node IP).
        let plan_opts = PlanOptions::local(
            &format!("{gw}:{XDS_TLS_PORT}"),
            &format!("{gw}:{XDS_TLS_PORT}"),
            dns_capture,
        );
        report(&format!(
            "weftd up: xDS and CA over mTLS {gw}:{XDS_TLS_PORT} (plaintext xDS {gw}:{XDS_PORT}), metrics and debug http://{gw}:{MONITORING_PORT}/metrics (inside the node namespace); DNS capture by sidecars: {}",
            if dns_capture {
                "on"
            } else {
                "off (this weft-proxy has no DNS proxy; the node's cluster DNS answers)"
            }
        ));
        let programs =
            BTreeMap::from([("weft".to_owned(), weft), ("weft-proxy".to_owned(), proxy)]);
        let mut mesh = Mesh {
            opts,
            report,
            dir,
            node,
            mirror,
            plan: Plan::default(),
            plan_opts,
            files: BTreeMap::new(),
            reported_errors: BTreeSet::new(),
            pods: BTreeMap::new(),
            netns_names: BTreeSet::new(),
            tokens,
            programs,
            published: BTreeMap::new(),
            last_state: String::new(),
            last_scan: Instant::now() - Duration::from_secs(1),
            last_change: Instant::now(),
            dns_capture,
        };
        mesh.step()?;
        Ok(mesh)
    }

    /// The current plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The node bridge's address (weftd, DNS).
    pub fn node_ip(&self) -> Ipv4Addr {
        self.node.gateway
    }

    /// Whether sidecars capture DNS.
    pub fn dns_capture(&self) -> bool {
        self.dns_capture
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// weftd's pid.
    pub fn weftd_pid(&self) -> Option<u32> {
        self.node.weftd_pid()
    }

    /// Pod key → status.
    pub fn pod_statuses(&self) -> BTreeMap<String, PodStatus> {
        self.pods
            .iter()
            .map(|(k, p)| (k.clone(), p.status()))
            .collect()
    }

    /// A command that runs `program` inside pod `query` (a name, a unique
    /// name prefix, or `namespace/name`) as root, with the pod's resolver
    /// files and Weft's binaries on `PATH`.
    pub fn pod_command(&self, query: &str, program: &str) -> Result<std::process::Command> {
        let (ns, name) = match query.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, query),
        };
        let candidates: Vec<&PodRuntime> = self
            .pods
            .values()
            .filter(|r| ns.is_none_or(|ns| r.plan.namespace == ns))
            .filter(|r| r.plan.name == name || r.plan.name.starts_with(&format!("{name}-")))
            .collect();
        let r = match candidates.as_slice() {
            [one] => *one,
            _ => {
                return Err(Error::NotFound(format!(
                    "{query:?} matches {} pods of the mesh",
                    candidates.len()
                )));
            }
        };
        let sandbox = crate::sandbox::Sandbox {
            netns: r.env.netns.clone(),
            resolv_conf: Some(r.env.resolv_conf.clone()),
            hosts: Some(r.env.hosts.clone()),
            run_as: None,
            hostname: Some(r.plan.name.clone()),
            new_session: true,
        };
        let program = self
            .programs
            .get(program)
            .cloned()
            .unwrap_or_else(|| PathBuf::from(program));
        let mut cmd = sandbox.command(program)?;
        let mut path: Vec<PathBuf> = self
            .programs
            .values()
            .filter_map(|p| p.parent().map(Path::to_owned))
            .collect();
        path.extend(std::env::split_paths(
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ));
        if let Ok(joined) = std::env::join_paths(path) {
            cmd.env("PATH", joined);
        }
        Ok(cmd)
    }

    /// Pod `namespace/name` → IP of every running pod.
    pub fn pod_ips(&self) -> BTreeMap<String, Ipv4Addr> {
        self.pods
            .iter()
            .map(|(k, r)| (k.clone(), r.env.ip))
            .collect()
    }

    /// The log directory of pod `namespace/name`.
    pub fn pod_log_dir(&self, key: &str) -> Option<PathBuf> {
        self.pods.get(key).map(|r| r.env.dir.clone())
    }

    /// weftd's log file.
    pub fn weftd_log(&self) -> &Path {
        &self.node.weftd_log
    }

    /// The node namespace's name.
    pub fn node_netns(&self) -> PathBuf {
        self.node.netns_path()
    }

    /// Every pod is ready and nothing was published for a second (weftd
    /// watches its directory and debounces pushes for about 200 ms).
    pub fn settled(&self) -> bool {
        self.all_ready() && self.last_change.elapsed() >= Duration::from_secs(1)
    }

    /// Whether every planned pod is ready.
    pub fn all_ready(&self) -> bool {
        self.plan.pods.iter().all(|p| {
            self.published.get(&p.key()) == Some(&true)
                && self
                    .pods
                    .get(&p.key())
                    .is_some_and(|r| r.status().ready && r.plan.fingerprint == p.fingerprint)
        })
    }

    /// Runs [`Mesh::step`] until every pod is ready or `limit` passes.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            self.step()?;
            if self.all_ready() {
                return Ok(());
            }
            if start.elapsed() > limit {
                let waiting: Vec<String> = self
                    .plan
                    .pods
                    .iter()
                    .filter(|p| !self.pods.get(&p.key()).is_some_and(|r| r.status().ready))
                    .map(|p| {
                        let events = self
                            .pods
                            .get(&p.key())
                            .map(|r| r.status().events.join("; "))
                            .unwrap_or_default();
                        format!("{} ({events})", p.key())
                    })
                    .collect();
                return Err(Error::Timeout {
                    what: "the mesh".into(),
                    secs: limit.as_secs(),
                    detail: format!("pods not ready: {}", waiting.join(", ")),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One reconcile pass.
    pub fn step(&mut self) -> Result<()> {
        if let Some(event) = self.node.tend_weftd() {
            (self.report)(&event);
        }
        if self.last_scan.elapsed() >= Duration::from_millis(200) {
            self.last_scan = Instant::now();
            let (files, mut read_errors) = manifest::read_dir(&self.opts.manifests)?;
            if files != self.files {
                let changed = !self.files.is_empty();
                self.files = files;
                self.replan(&mut read_errors, changed)?;
            }
        }
        self.publish()?;
        self.save_state()
    }

    fn replan(&mut self, read_errors: &mut Vec<PlanError>, changed: bool) -> Result<()> {
        self.plan_opts.previous_vips = self.plan.vips();
        let mut plan = plan_files(&self.files, &self.plan_opts);
        plan.errors.append(read_errors);
        if changed {
            (self.report)("manifests changed: applying");
        }
        let current: BTreeSet<String> = plan.errors.iter().map(ToString::to_string).collect();
        for e in current.difference(&self.reported_errors) {
            (self.report)(&format!("error: {e} (this object is not applied)"));
        }
        self.reported_errors = current;
        self.mirror.set_config(&plan.config)?;
        self.last_change = Instant::now();
        {
            let mut table = self
                .node
                .dns_table
                .write()
                .unwrap_or_else(|e| e.into_inner());
            table.clear();
            for s in &plan.services {
                if let Some(vip) = s.vip {
                    table.insert(
                        format!("{}.{}.svc.{}", s.name, s.namespace, dns::DOMAIN),
                        vip,
                    );
                }
            }
        }
        // Pods that went away or changed template: stop them (all at once).
        let wanted: BTreeMap<String, &crate::PodPlan> =
            plan.pods.iter().map(|p| (p.key(), p)).collect();
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(k, r)| {
                wanted
                    .get(*k)
                    .is_none_or(|p| p.fingerprint != r.plan.fingerprint)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut stopping = Vec::new();
        for key in gone {
            if let Some(r) = self.pods.remove(&key) {
                self.withdraw(&r);
                r.signal_stop();
                self.tokens.revoke_pod(&key);
                (self.report)(&format!("pod {key}: stopping"));
                stopping.push(r);
            }
        }
        for r in stopping {
            if let Some(tb) = &r.testbed {
                self.netns_names.remove(tb.name());
            }
            r.stop();
        }
        for p in &plan.pods {
            if !self.pods.contains_key(&p.key()) {
                match self.start_pod(p) {
                    Ok(r) => {
                        self.pods.insert(p.key(), r);
                    }
                    Err(e) => (self.report)(&format!("error: pod {}: {e}", p.key())),
                }
            }
        }
        self.plan = plan;
        Ok(())
    }

    fn start_pod(&mut self, p: &crate::PodPlan) -> Result<PodRuntime> {
        let short = self.netns_name(&p.namespace, &p.name);
        let tb = self.node.node.add_pod(&short)?;
        self.netns_names.insert(short.clone());
        let ip = tb.addr();
        let dir = self
            .dir
            .join("pods")
            .join(format!("{}.{}", p.namespace, p.name));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        set_mode(&dir, 0o755)?;
        let gw = self.node.gateway;
        let resolv_conf = dir.join("resolv.conf");
        let hosts = dir.join("hosts");
        write_file(
            &resolv_conf,
            &format!(
                "# written by weft up for pod {}\nsearch {ns}.svc.{d} svc.{d} {d}\nnameserver {gw}\noptions ndots:5\n",
                p.key(),
                ns = p.namespace,
                d = dns::DOMAIN
            ),
        )?;
        write_file(
            &hosts,
            &format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{}\n",
                p.name
            ),
        )?;
        let mut proxy_env = Vec::new();
        let sidecar_user = p
            .containers
            .iter()
            .find(|c| {
                c.role == Role::Sidecar
                    && matches!(&c.argv.program, Program::Weft(n) if n == "weft-proxy")
            })
            .map(|c| c.run_as.unwrap_or((0, 0)));
        if let Some((uid, gid)) = sidecar_user {
            let token = dir.join("istio-token");
            self.tokens
                .issue_to_file(&p.namespace, &p.service_account, &p.key(), &token)?;
            self.tokens.save(&self.node.tokens_file())?;
            nix::unistd::chown(
                &token,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| Error::Io {
                path: token.clone(),
                source: e.into(),
            })?;
            proxy_env.push(("WEFT_TOKEN_FILE".to_owned(), token.display().to_string()));
            proxy_env.push((
                "WEFT_ROOT_CERT_FILE".to_owned(),
                self.node.root_cert().display().to_string(),
            ));
        }
        (self.report)(&format!(
            "pod {} {ip}{}: starting",
            p.key(),
            if p.injected { " (sidecar)" } else { "" }
        ));
        let env = PodEnv {
            netns: tb.netns().path().to_owned(),
            ip,
            host_ip: gw,
            dir,
            resolv_conf,
            hosts,
            proxy_env,
            programs: self.programs.clone(),
        };
        Ok(PodRuntime::start(p.clone(), env, tb))
    }

    /// A namespace-name suffix for pod `ns/name` (testbed names are at most
    /// 24 characters).
    fn netns_name(&self, ns: &str, name: &str) -> String {
        if name.len() <= 24 && !self.netns_names.contains(name) {
            return name.to_owned();
        }
        let hash = crate::workload::fnv1a(format!("{ns}/{name}").as_bytes());
        let head: String = name.chars().take(15).collect();
        let mut candidate = format!("{}-{hash:08x}", head.trim_end_matches('-'));
        let mut n = 0;
        while self.netns_names.contains(&candidate) {
            n += 1;
            candidate = format!(
                "{}-{:08x}",
                head.trim_end_matches('-'),
                hash.wrapping_add(n)
            );
        }
        candidate
    }

    fn withdraw(&mut self, r: &PodRuntime) {
        if self.published.remove(&r.plan.key()).is_some() {
            self.mirror.withdraw_pod(&r.plan.namespace, &r.plan.name);
        }
    }

    /// Stops every pod and weftd and deletes every namespace and the state.
    pub fn shutdown(mut self) {
        (self.report)("shutting down: stopping pods");
        for r in self.pods.values() {
            r.signal_stop();
        }
        for (_, r) in std::mem::take(&mut self.pods) {
            r.stop();
        }
        self.node.stop_weftd();
        let prefix = state::prefix(&self.opts.name);
        let dir = self.dir.clone();
        let report = Arc::clone(&self.report);
        drop(self);
        // Anything a crash of a supervisor left behind.
        if let Err(e) = weft_testbed::cleanup_prefix(&prefix) {
            report(&format!("cleanup: {e}"));
        }
        let _ = std::fs::remove_dir_all(&dir);
        report("mesh removed");
    }
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    })
}

/// Removes mesh `name`: stops its `weft up` (SIGTERM, then waits), kills
/// what runs in its namespaces, deletes them and its state. Returns the
/// namespaces deleted.
pub fn down(name: &str) -> Result<Vec<String>> {
    require_root("weft down")?;
    if let Ok(st) = MeshState::load(name)
        && st.pid != std::process::id()
        && Path::new(&format!("/proc/{}", st.pid)).exists()
    {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if let Ok(pid) = i32::try_from(st.pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end && Path::new(&format!("/proc/{}", st.pid)).exists() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let removed = weft_testbed::cleanup_prefix(&state::prefix(name))?;
    let _ = std::fs::remove_dir_all(state::dir(name));
    Ok(removed)
}
