//! One running pod, playing kubelet's part: init containers in order, then
//! native sidecars (waiting for their startup/readiness probe, as
//! Kubernetes does), then the apps; readiness probes on the pod's localhost
//! (the agent's part for probes Istio rewrote); containers that exit are
//! restarted with exponential backoff, and the pod is unready while any is
//! down. A supervisor thread owns the processes; [`PodRuntime`] is the
//! handle the mesh keeps.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::container::{ContainerPlan, EnvValue, ProbeAction, Role, expand};
use crate::error::{Error, Result};
use crate::image::Program;
use crate::plan::PodPlan;
use crate::sandbox::Sandbox;

use super::process::{http_probe, in_netns, terminate};

/// First restart delay; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(16);
/// A container that ran this long gets its backoff reset.
const STABLE_RUN: Duration = Duration::from_secs(10);
/// How long init containers and sidecar startup may take.
const STARTUP_LIMIT: Duration = Duration::from_secs(120);
/// How long a stopped container gets between SIGTERM and SIGKILL.
pub(crate) const GRACE: Duration = Duration::from_secs(2);

/// What the mesh can see of a pod.
#[derive(Debug, Clone, Default)]
pub struct PodStatus {
    /// Every container runs and every probe passes.
    pub ready: bool,
    /// Container name → pid (0 when not running).
    pub pids: Vec<(String, u32)>,
    /// Container restarts so far.
    pub restarts: u32,
    /// The last notable event (for messages).
    pub events: Vec<String>,
}

/// Where a pod's files are and what its processes need from the node.
#[derive(Debug, Clone)]
pub(crate) struct PodEnv {
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    pub dir: PathBuf,
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
    /// Env added to weft-proxy sidecars (token and root cert files).
    pub proxy_env: Vec<(String, String)>,
    /// Resolved program paths (`weft`, `weft-proxy`).
    pub programs: BTreeMap<String, PathBuf>,
}

/// The handle of a running pod.
pub(crate) struct PodRuntime {
    pub plan: PodPlan,
    pub env: PodEnv,
    pub status: Arc<Mutex<PodStatus>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The namespace and veth; dropped after the supervisor has stopped.
    pub testbed: Option<weft_testbed::Pod>,
}

impl PodRuntime {
    pub(crate) fn start(plan: PodPlan, env: PodEnv, testbed: weft_testbed::Pod) -> PodRuntime {
        let status = Arc::new(Mutex::new(PodStatus::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let supervisor = Supervisor {
            plan: plan.clone(),
            env: env.clone(),
            status: Arc::clone(&status),
            stop: Arc::clone(&stop),
        };
        let thread = std::thread::Builder::new()
            .name(format!("pod {}", plan.name))
            .spawn(move || supervisor.run())
            .ok();
        PodRuntime {
            plan,
            env,
            status,
            stop,
            thread,
            testbed: Some(testbed),
        }
    }

    /// A copy of the current status.
    pub(crate) fn status(&self) -> PodStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Asks the supervisor to stop (returns at once).
    pub(crate) fn signal_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops the processes, then deletes the namespace.
    pub(crate) fn stop(mut self) {
        self.signal_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        drop(self.testbed.take());
    }
}

// === impl Supervisor ===

struct Running {
    child: Child,
    started: Instant,
}

struct ContainerState {
    plan: ContainerPlan,
    running: Option<Running>,
    backoff: Duration,
    restart_at: Option<Instant>,
    next_probe: Instant,
    probe_ok: bool,
    failures: u32,
    starts: u32,
}

struct Supervisor {
    plan: PodPlan,
    env: PodEnv,
    status: Arc<Mutex<PodStatus>>,
    stop: Arc<AtomicBool>,
}

impl Supervisor {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn event(&self, text: String) {
        tracing::info!(pod = %self.plan.key(), "{text}");
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        s.events.push(text);
        if s.events.len() > 20 {
            s.events.remove(0);
        }
    }

    fn run(self) {
        let mut backoff = FIRST_BACKOFF;
        // Init containers: in order, each to success; retried with backoff.
        'init: while !self.stopping() {
            for c in self.plan.containers.iter().filter(|c| c.role == Role::Init) {
                match self.run_to_completion(c) {
                    Ok(()) => {}
                    Err(e) => {
                        self.event(format!(
                            "init container {} failed: {e}; retrying in {backoff:?}",
                            c.name
                        ));
                        self.sleep(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue 'init;
                    }
                }
            }
            break;
        }
        let now = Instant::now();
        let mut states: Vec<ContainerState> = self
            .plan
            .containers
            .iter()
            .filter(|c| c.role != Role::Init)
            .map(|c| ContainerState {
                plan: c.clone(),
                running: None,
                backoff: FIRST_BACKOFF,
                restart_at: Some(now),
                next_probe: now,
                probe_ok: false,
                failures: 0,
                starts: 0,
            })
            .collect();
        // Sidecars first; apps wait until every sidecar passed its probe
        // (native sidecars' startup ordering).
        let mut apps_started = false;
        let startup = Instant::now();
        while !self.stopping() {
            let now = Instant::now();
            let sidecars_ready = states
                .iter()
                .filter(|s| s.plan.role == Role::Sidecar)
                .all(|s| s.running.is_some() && s.probe_ok);
            if sidecars_ready && !apps_started {
                apps_started = true;
            }
            if !apps_started && now.duration_since(startup) > STARTUP_LIMIT {
                self.event(format!(
                    "sidecars not ready after {}s; starting the apps anyway",
                    STARTUP_LIMIT.as_secs()
                ));
                apps_started = true;
            }
            let mut restarts = 0;
            for s in &mut states {
                if s.plan.role == Role::App && !apps_started {
                    continue;
                }
                restarts += self.tend(s, now);
            }
            let ready = apps_started && states.iter().all(|s| s.running.is_some() && s.probe_ok);
            {
                let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
                st.ready = ready;
                st.restarts += restarts;
                st.pids = states
                    .iter()
                    .map(|s| {
                        (
                            s.plan.name.clone(),
                            s.running.as_ref().map_or(0, |r| r.child.id()),
                        )
                    })
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        {
            let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            st.ready = false;
        }
        // Apps first, then sidecars (Kubernetes' order for native sidecars).
        for role in [Role::App, Role::Sidecar] {
            let mut children: Vec<Child> = states
                .iter_mut()
                .filter(|s| s.plan.role == role)
                .filter_map(|s| s.running.take().map(|r| r.child))
                .collect();
            terminate(&mut children, GRACE);
        }
    }

    /// One pass over a long-running container: notice exits, restart when
    /// due, probe when due. Returns the number of restarts made.
    fn tend(&self, s: &mut ContainerState, now: Instant) -> u32 {
        let mut restarts = 0;
        if let Some(r) = &mut s.running
            && let Ok(Some(status)) = r.child.try_wait()
        {
            let ran = now.duration_since(r.started);
            if ran >= STABLE_RUN {
                s.backoff = FIRST_BACKOFF;
            }
            self.event(format!(
                "container {} exited ({status}) after {:.1}s; restarting in {:?}",
                s.plan.name,
                ran.as_secs_f64(),
                s.backoff
            ));
            s.running = None;
            s.probe_ok = false;
            s.failures = 0;
            s.restart_at = Some(now + s.backoff);
            s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
        }
        if s.running.is_none()
            && let Some(at) = s.restart_at
            && now >= at
        {
            match self.spawn(&s.plan) {
                Ok(child) => {
                    if s.plan.readiness.is_none() {
                        s.probe_ok = true;
                    }
                    let delay = s.plan.readiness.as_ref().map_or(0, |p| p.initial_delay_s);
                    s.next_probe = now + Duration::from_secs(delay.into());
                    s.running = Some(Running {
                        child,
                        started: now,
                    });
                    s.restart_at = None;
                    s.starts += 1;
                    if s.starts > 1 {
                        restarts += 1;
                    }
                }
                Err(e) => {
                    self.event(format!(
                        "container {}: {e}; retrying in {:?}",
                        s.plan.name, s.backoff
                    ));
                    s.restart_at = Some(now + s.backoff);
                    s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        if s.running.is_some()
            && let Some(probe) = &s.plan.readiness
            && now >= s.next_probe
        {
            // Before the first success, probe fast so pods come up quickly.
            let period = if s.probe_ok {
                Duration::from_secs(probe.period_s.into())
            } else {
                Duration::from_millis(200)
            };
            s.next_probe = now + period;
            let timeout = Duration::from_secs(probe.timeout_s.into());
            match self.probe(&probe.action, timeout) {
                Ok(()) => {
                    if !s.probe_ok {
                        tracing::debug!(pod = %self.plan.key(), container = %s.plan.name, "readiness probe passed");
                    }
                    s.probe_ok = true;
                    s.failures = 0;
                }
                Err(why) => {
                    s.failures += 1;
                    if s.probe_ok && s.failures >= probe.failure_threshold {
                        self.event(format!("container {} is not ready: {why}", s.plan.name));
                        s.probe_ok = false;
                    }
                }
            }
        }
        restarts
    }

    fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end && !self.stopping() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn run_to_completion(&self, c: &ContainerPlan) -> Result<()> {
        let mut child = self.spawn(c)?;
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return if status.success() {
                    Ok(())
                } else {
                    Err(Error::Spawn {
                        what: format!("init container {}", c.name),
                        message: format!(
                            "exited with {status}; see {}",
                            self.env.dir.join(format!("{}.log", c.name)).display()
                        ),
                    })
                };
            }
            if self.stopping() || start.elapsed() > STARTUP_LIMIT {
                terminate(&mut [child], GRACE);
                return Err(Error::Timeout {
                    what: format!("init container {}", c.name),
                    secs: STARTUP_LIMIT.as_secs(),
                    detail: "still running".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a container's process in the pod, output appended to its log.
    fn spawn(&self, c: &ContainerPlan) -> Result<Child> {
        let what = || format!("pod {} container {}", self.plan.key(), c.name);
        let program = match &c.argv.program {
            Program::Weft(name) => {
                self.env
                    .programs
                    .get(name)
                    .cloned()
                    .ok_or_else(|| Error::Spawn {
                        what: what(),
                        message: format!("no path for Weft binary {name}"),
                    })?
            }
            Program::Host(p) => PathBuf::from(p),
        };
        let env = self.resolved_env(c);
        let args: Vec<String> = c.argv.args.iter().map(|a| expand(a, &env)).collect();
        let log_path = self.env.dir.join(format!("{}.log", c.name));
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| Error::Io {
                path: log_path.clone(),
                source,
            })?;
        let _ = writeln!(
            log,
            "--- weft up: starting {} {} ---",
            program.display(),
            args.join(" ")
        );
        let err_log = log.try_clone().map_err(|source| Error::Io {
            path: log_path.clone(),
            source,
        })?;
        let sandbox = Sandbox {
            netns: self.env.netns.clone(),
            resolv_conf: Some(self.env.resolv_conf.clone()),
            hosts: Some(self.env.hosts.clone()),
            run_as: c.run_as,
            hostname: Some(self.plan.name.clone()),
            new_session: true,
        };
        let mut cmd = sandbox.command(&program)?;
        cmd.args(&args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log));
        cmd.spawn().map_err(|e| Error::Spawn {
            what: what(),
            message: format!("{}: {e}", program.display()),
        })
    }

    /// The container's environment with the pod's facts filled in.
    fn resolved_env(&self, c: &ContainerPlan) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("HOSTNAME".into(), self.plan.name.clone()),
            ("HOME".into(), "/root".into()),
        ];
        for (k, v) in &c.env {
            let value = match v {
                EnvValue::Literal(s) => expand(s, &env),
                EnvValue::PodIp | EnvValue::PodIps => self.env.ip.to_string(),
                EnvValue::HostIp => self.env.host_ip.to_string(),
            };
            env.push((k.clone(), value));
        }
        let is_proxy = matches!(&c.argv.program, Program::Weft(p) if p == "weft-proxy")
            && c.role == Role::Sidecar;
        if is_proxy {
            env.extend(self.env.proxy_env.iter().cloned());
            let labels = serde_json::to_string(&self.plan.labels).unwrap_or_default();
            env.push(("ISTIO_METAJSON_LABELS".into(), labels));
        }
        env
    }

    fn probe(&self, action: &ProbeAction, timeout: Duration) -> std::result::Result<(), String> {
        match action {
            ProbeAction::Http { port, path } => {
                let port = *port;
                let path = path.clone();
                let netns = self.env.netns.clone();
                in_netns(&netns, move || http_probe(port, &path, timeout))?
            }
            ProbeAction::Tcp { port } => {
                let port = *port;
                in_netns(&self.env.netns, move || {
                    TcpStream::connect_timeout(
                        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                        timeout,
                    )
                    .map(drop)
                    .map_err(|e| format!("tcp {port}: {e}"))
                })?
            }
            ProbeAction::Exec { command } => {
                let sandbox = Sandbox {
                    netns: self.env.netns.clone(),
                    resolv_conf: Some(self.env.resolv_conf.clone()),
                    hosts: Some(self.env.hosts.clone()),
                    run_as: None,
                    hostname: Some(self.plan.name.clone()),
                    new_session: true,
                };
                let mut cmd = sandbox.command(&command[0]).map_err(|e| e.to_string())?;
                cmd.args(&command[1..])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", command[0]))?;
                let start = Instant::now();
                loop {
                    if let Ok(Some(status)) = child.try_wait() {
                        return if status.success() {
                            Ok(())
                        } else {
                            Err(format!("exec probe exited with {status}"))
                        };
                    }
                    if start.elapsed() > timeout {
                        terminate(&mut [child], Duration::ZERO);
                        return Err("exec probe timed out".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}
