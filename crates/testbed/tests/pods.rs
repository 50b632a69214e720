//! The testbed in real network namespaces: pods reach each other over the
//! node bridge, processes run with the requested credentials inside the pod,
//! and everything is gone after drop, after a panic, and after
//! `cleanup_prefix`. Needs root.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use weft_testbed::{Error, Node, RunAs, cleanup_prefix, require_root};

const TIMEOUT: Duration = Duration::from_secs(5);

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Accepts one connection on `listener`, answers with the peer address it
/// saw, and returns that peer address.
fn serve_one(listener: &TcpListener) -> SocketAddr {
    let (mut conn, peer) = listener.accept().expect("accept");
    conn.write_all(peer.ip().to_string().as_bytes())
        .expect("write");
    peer
}

fn connect_and_read(to: SocketAddr) -> String {
    let mut conn = TcpStream::connect_timeout(&to, TIMEOUT).expect("connect");
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("read");
    reply
}

fn tcp_between(from: &weft_testbed::Pod, to: &weft_testbed::Pod, to_ip: IpAddr) {
    let listener = to
        .enter(|| TcpListener::bind(SocketAddr::new(to_ip, 0)))
        .unwrap()
        .expect("bind in pod");
    let target = listener.local_addr().unwrap();
    std::thread::scope(|s| {
        let server = s.spawn(|| serve_one(&listener));
        let reply = from.enter(|| connect_and_read(target)).unwrap();
        let peer = server.join().unwrap();
        let from_ip: IpAddr = match to_ip {
            IpAddr::V4(_) => from.addr().into(),
            IpAddr::V6(_) => from.addr_v6().into(),
        };
        assert_eq!(
            peer.ip(),
            from_ip,
            "the server sees the client pod's address"
        );
        assert_eq!(reply, from_ip.to_string());
    });
}

#[test]
fn pods_reach_each_other_over_ipv4_and_ipv6() {
    require_root();
    let node = Node::new().unwrap();
    let a = node.add_pod("a").unwrap();
    let b = node.add_pod("b").unwrap();
    assert_ne!(a.addr(), b.addr());
    assert_eq!(node.gateway().octets()[..3], a.addr().octets()[..3]);
    tcp_between(&a, &b, b.addr().into());
    tcp_between(&b, &a, a.addr().into());
    tcp_between(&a, &b, b.addr_v6().into());
}

#[test]
fn nothing_leads_out_of_the_node() {
    require_root();
    let node = Node::new().unwrap();
    let a = node.add_pod("a").unwrap();
    let out = weft_testbed::run(a.command("ip").unwrap().args(["-o", "link", "show"])).unwrap();
    let names: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap())
        .collect();
    assert_eq!(names, ["lo", "eth0"], "ip link in the pod: {out}");
    // The node namespace is not the host's.
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    let in_node = node
        .netns()
        .enter(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap())
        .unwrap();
    assert_ne!(host, in_node);
    // The node has only its bridge and the pods' veths, no way out, and
    // forwards nothing: packets for other addresses die there.
    let node_ip = |args: &[&str]| {
        weft_testbed::run(node.netns().command("ip", RunAs::Root).unwrap().args(args)).unwrap()
    };
    let links = node_ip(&["-o", "link", "show"]);
    let kinds: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap())
        .collect();
    assert_eq!(kinds, ["lo", "br0", "vp1"], "{links}");
    let routes = node_ip(&["-4", "route"]) + &node_ip(&["-6", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    let forwarding = node
        .netns()
        .enter(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap())
        .unwrap();
    assert_eq!(forwarding.trim(), "0");
}

#[test]
fn processes_run_as_the_requested_user_inside_the_pod() {
    require_root();
    let node = Node::new().unwrap();
    let a = node.add_pod("app").unwrap();
    let out = weft_testbed::run(
        a.command_as("sh", RunAs::user(4242, 4343))
            .unwrap()
            .args(["-c", "id -u; id -g; id -G; ip -o -4 addr show dev eth0"]),
    )
    .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["4242", "4343", "4343"], "{out}");
    assert!(
        lines[3].contains(&format!("inet {}/24", a.addr())),
        "the process sees the pod's address: {out}"
    );
    let root = weft_testbed::run(a.command("id").unwrap().arg("-u")).unwrap();
    assert_eq!(root.trim(), "0");
}

#[test]
fn drop_kills_processes_and_removes_namespaces_and_veths() {
    require_root();
    let node = Node::new().unwrap();
    let node_ns = node.netns().name().to_owned();
    let a = node.add_pod("a").unwrap();
    let b = node.add_pod("b").unwrap();
    let (a_ns, b_ns) = (a.netns().name().to_owned(), b.netns().name().to_owned());
    // One raw child (only the pod's teardown can kill it) and one supervised.
    let mut raw = a.command("sleep").unwrap().arg("600").spawn().unwrap();
    let supervised = b.spawn(b.command("sleep").unwrap().arg("600")).unwrap();
    assert_eq!(a.netns().pids().unwrap(), [raw.id() as i32]);
    assert!(netns_exists(&a_ns) && netns_exists(&b_ns) && netns_exists(&node_ns));

    drop(supervised);
    drop(a);
    let status = raw.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(!netns_exists(&a_ns));
    let links = weft_testbed::run(
        node.netns()
            .command("ip", RunAs::Root)
            .unwrap()
            .args(["-o", "link"]),
    )
    .unwrap();
    assert!(!links.contains("vp1"), "pod a's veth is gone: {links}");
    assert!(links.contains("vp2"), "pod b's veth stays: {links}");

    drop(node);
    assert!(netns_exists(&node_ns), "the node lives while pod b does");
    drop(b);
    assert!(!netns_exists(&b_ns) && !netns_exists(&node_ns));
}

#[test]
fn teardown_runs_after_a_panic() {
    require_root();
    let mut names = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let node = Node::new().unwrap();
        let a = node.add_pod("a").unwrap();
        names.push(node.netns().name().to_owned());
        names.push(a.netns().name().to_owned());
        a.enter(|| panic!("test body fails inside the pod"))
            .unwrap();
    }));
    let panic = result.expect_err("the closure panics");
    assert_eq!(
        panic.downcast_ref::<&str>(),
        Some(&"test body fails inside the pod")
    );
    assert_eq!(names.len(), 2);
    for name in names {
        assert!(!netns_exists(&name), "{name} was removed while unwinding");
    }
}

#[test]
fn cleanup_prefix_removes_what_a_crashed_run_left() {
    require_root();
    let prefix = format!("wtbc-{}-", std::process::id());
    let node = Node::builder().prefix(&prefix).build().unwrap();
    let a = node.add_pod("a").unwrap();
    let mut sleeper = a.command("sleep").unwrap().arg("600").spawn().unwrap();
    let names = [node.netns().name().to_owned(), a.netns().name().to_owned()];
    // Simulate a crash: no destructor runs.
    std::mem::forget(a);
    std::mem::forget(node);

    let mut removed = cleanup_prefix(&prefix).unwrap();
    removed.sort();
    let mut expected = names.to_vec();
    expected.sort();
    assert_eq!(removed, expected);
    for name in &names {
        assert!(!netns_exists(name), "{name}");
    }
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the leftover process was killed");
    assert_eq!(cleanup_prefix(&prefix).unwrap(), Vec::<String>::new());
}

#[test]
fn bad_names_are_refused_with_the_value() {
    require_root();
    let node = Node::new().unwrap();
    let _a = node.add_pod("a").unwrap();
    let dup = node.add_pod("a").unwrap_err();
    assert!(matches!(dup, Error::DuplicatePod { .. }), "{dup}");
    for bad in ["", "Upper", "node", "has space", "x".repeat(25).as_str()] {
        let err = node.add_pod(bad).unwrap_err();
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    let err = Node::builder().prefix("x").build().unwrap_err();
    assert!(err.to_string().contains("namespace prefix \"x\""), "{err}");
    let err = Node::builder()
        .subnet(std::net::Ipv4Addr::new(10, 1, 2, 3))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("10.1.2.3"), "{err}");
    // A failed pod creation leaves its slot free.
    let b = node.add_pod("b").unwrap();
    assert_eq!(b.addr().octets()[3], 3);
}

#[test]
fn probes_report_what_the_server_saw_and_never_hang() {
    use weft_testbed::probe::{ListenMode, Responder, probe, probe_as, probe_within};
    require_root();
    let node = Node::new().unwrap();
    let a = node.add_pod("a").unwrap();
    let b = node.add_pod("b").unwrap();
    let server =
        Responder::start(&b, "server", (b.addr(), 7000).into(), ListenMode::Plain).unwrap();
    let server6 = Responder::start(
        &b,
        "server6",
        (b.addr_v6(), 7000).into(),
        ListenMode::Transparent,
    )
    .unwrap();

    let answer = probe(&a, server.addr()).unwrap().unwrap();
    assert_eq!(answer.name, "server");
    assert_eq!(answer.local, server.addr());
    assert_eq!(answer.peer.ip(), IpAddr::from(a.addr()));
    // No NAT (no conntrack) in this namespace: no original destination.
    assert_eq!(answer.original_dst, None);

    let answer = probe_as(&a, RunAs::user(2000, 2000), server6.addr())
        .unwrap()
        .unwrap();
    assert_eq!(answer.name, "server6");
    assert_eq!(answer.peer.ip(), IpAddr::from(a.addr_v6()));

    // Nobody listens on 7001: the probe reports the failure, it does not hang.
    let refused = probe_within(&a, (b.addr(), 7001).into(), TIMEOUT).unwrap();
    assert!(refused.unwrap_err().contains("refused"));
    let refused = probe_as(&a, RunAs::user(2000, 2000), (b.addr(), 7001).into()).unwrap();
    assert!(refused.is_err());
}

#[test]
fn nodes_and_pods_can_be_created_from_many_threads() {
    require_root();
    let nodes: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let node = Node::new().unwrap();
                    let pods: Vec<_> = std::thread::scope(|s| {
                        let hs: Vec<_> = ["p1", "p2", "p3"]
                            .map(|name| s.spawn(|| node.add_pod(name).unwrap()))
                            .into_iter()
                            .collect();
                        hs.into_iter().map(|h| h.join().unwrap()).collect()
                    });
                    (node, pods)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_ne!(nodes[0].0.prefix(), nodes[1].0.prefix());
    for (_, pods) in &nodes {
        let mut addrs: Vec<_> = pods.iter().map(|p| p.addr()).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 3, "distinct addresses: {addrs:?}");
        tcp_between(&pods[0], &pods[2], pods[2].addr().into());
    }
}

#[test]
fn supervised_processes_can_be_waited_for_with_a_bound() {
    require_root();
    let node = Node::new().unwrap();
    let a = node.add_pod("a").unwrap();
    let mut quick = a.spawn(&mut a.command("true").unwrap()).unwrap();
    let status = quick.wait_timeout(TIMEOUT).unwrap().expect("`true` exits");
    assert!(status.success());
    let mut slow = a.spawn(a.command("sleep").unwrap().arg("600")).unwrap();
    assert_eq!(slow.wait_timeout(Duration::from_millis(50)).unwrap(), None);
    let status = slow.kill().unwrap();
    assert!(!status.success());
}

#[test]
fn pods_can_be_linked_directly() {
    use weft_testbed::probe::{ListenMode, Responder, probe};
    require_root();
    let node = Node::new().unwrap();
    let a = node.add_pod("a").unwrap();
    let vm = node.add_pod("vm").unwrap();
    let (a_addr, vm_addr) = ([192, 168, 77, 1].into(), [192, 168, 77, 2].into());
    a.link_to(&vm, ("virt0", a_addr), ("vm0", vm_addr), 24)
        .unwrap();
    let server = Responder::start(&a, "a", (a_addr, 7000).into(), ListenMode::Plain).unwrap();
    let answer = probe(&vm, server.addr()).unwrap().unwrap();
    assert_eq!(
        answer.peer.ip(),
        IpAddr::from(vm_addr),
        "came over the link"
    );
    let links = weft_testbed::run(vm.command("ip").unwrap().args(["-o", "-4", "addr"])).unwrap();
    assert!(
        links.contains("vm0") && links.contains("192.168.77.2/24"),
        "{links}"
    );
    let err = a
        .link_to(
            &vm,
            ("a-name-too-long-for-linux", a_addr),
            ("x", vm_addr),
            24,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("a-name-too-long-for-linux"),
        "{err}"
    );
}

#[test]
fn sockets_made_in_enter_as_belong_to_that_user_and_the_caller_is_unchanged() {
    require_root();
    let node = Node::new().unwrap();
    let a = node.add_pod("a").unwrap();
    let uid_line = |status: &str| {
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        line.split_whitespace()
            .skip(1)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let (listener, uids_inside) = a
        .enter_as(RunAs::user(1337, 1337), || {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            (listener, uid_line(&status))
        })
        .unwrap();
    // Real, effective, saved uid stay root; only the filesystem uid changes.
    assert_eq!(uids_inside, ["0", "0", "0", "1337"]);
    // /proc/net/tcp's uid column is the socket's owner.
    let port = listener.local_addr().unwrap().port();
    let table = weft_testbed::run(a.command("cat").unwrap().arg("/proc/net/tcp")).unwrap();
    let row = table
        .lines()
        .find(|l| l.contains(&format!(":{port:04X} ")))
        .unwrap_or_else(|| panic!("port {port} in {table}"));
    assert_eq!(row.split_whitespace().nth(7), Some("1337"), "{row}");
    // The calling thread is unchanged.
    let own = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    assert_eq!(uid_line(&own), ["0", "0", "0", "0"]);
}

#[test]
fn commands_die_with_their_thread_unless_detached() {
    require_root();
    let node = Node::new().unwrap();
    let a = node.add_pod("a").unwrap();
    let (mut tied, mut detached) = std::thread::scope(|s| {
        s.spawn(|| {
            let tied = a.command("sleep").unwrap().arg("600").spawn().unwrap();
            let detached = a
                .command_detached("sleep", RunAs::Root)
                .unwrap()
                .arg("600")
                .spawn()
                .unwrap();
            (tied, detached)
        })
        .join()
        .unwrap()
    });
    // The spawning thread has exited: the tied child got SIGKILL.
    let status = tied.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert_eq!(
        detached.try_wait().unwrap(),
        None,
        "the detached child still runs"
    );
    drop(a);
    let status = detached.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "pod teardown killed it"
    );
}

#[test]
fn cleanup_stale_removes_namespaces_of_dead_processes_only() {
    require_root();
    // Above pid_max: no process can have this pid.
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dead = pid_max + 1;
    let stale = format!("wtb-{dead}-0-node");
    weft_testbed::run(std::process::Command::new("ip").args(["netns", "add", &stale])).unwrap();
    let live = Node::new().unwrap();

    let removed = weft_testbed::cleanup_stale().unwrap();
    assert!(removed.contains(&stale), "{removed:?}");
    assert!(!netns_exists(&stale));
    assert!(
        netns_exists(live.netns().name()),
        "a live process's node stays"
    );
}
