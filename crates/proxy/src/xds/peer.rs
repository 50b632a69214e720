//! Whether a loopback TCP connection comes from this process: the peer's
//! socket is looked up in the namespace's TCP table (`/proc/net/tcp`,
//! `/proc/net/tcp6`) by its address pair, and its inode among this
//! process's file descriptors (`/proc/self/fd`). Used by the xDS relay so
//! that only weft-proxy's own ADS client rides on its certificate.
//!
//! It fails closed: a connection is carried only when its socket is
//! positively found among this process's own; if `/proc` cannot tell (an
//! unreadable table, a socket already gone), the connection is refused and
//! the ADS client retries with its usual backoff.

use std::net::{IpAddr, SocketAddr};

/// `addr` as the kernel prints it in `/proc/net/tcp{,6}`: each 32-bit
/// word of the address in host byte order as hex, a colon, the port.
pub fn proc_net_addr(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => v6
            .octets()
            .chunks_exact(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    };
    format!("{ip}:{:04X}", addr.port())
}

/// The inode of the socket with local address `local` and remote address
/// `remote` (both in [`proc_net_addr`] form) in a `/proc/net/tcp` table.
pub fn find_inode(table: &str, local: &str, remote: &str) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&local) && f.get(2) == Some(&remote))
            .then(|| f.get(9)?.parse().ok())
            .flatten()
    })
}

/// Whether the connection from `peer` to our `listener` address comes from
/// a socket this process holds (false when `/proc` cannot tell).
pub fn is_own_socket(listener: SocketAddr, peer: SocketAddr) -> bool {
    let table = if peer.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let fds = || {
        let dir = std::fs::read_dir("/proc/self/fd").ok()?;
        Some(
            dir.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|t| t.into_os_string().into_string().ok())
                .collect(),
        )
    };
    owns(
        std::fs::read_to_string(table).ok().as_deref(),
        peer,
        listener,
        fds,
    )
}

/// The decision of [`is_own_socket`] over what `/proc` showed: the TCP
/// table (`None`: unreadable) and, read only when the socket is in it, the
/// link targets of this process's file descriptors (`None`: unreadable).
/// Anything it cannot establish counts as not ours.
fn owns(
    table: Option<&str>,
    peer: SocketAddr,
    listener: SocketAddr,
    fds: impl FnOnce() -> Option<Vec<String>>,
) -> bool {
    let Some(inode) =
        table.and_then(|t| find_inode(t, &proc_net_addr(peer), &proc_net_addr(listener)))
    else {
        return false;
    };
    let want = format!("socket:[{inode}]");
    fds().is_some_and(|targets| targets.contains(&want))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_print_as_the_kernel_does() {
        let v4: SocketAddr = "127.0.0.1:15012".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(proc_net_addr(v4), "0100007F:3AA4");
            assert_eq!(proc_net_addr(v6), "00000000000000000000000001000000:0050");
        } else {
            assert_eq!(proc_net_addr(v4), "7F000001:3AA4");
        }
    }

    #[test]
    fn the_inode_is_found_by_the_address_pair() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:3AA4 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0\n\
   1: 0100007F:9C40 0100007F:3AA4 01 00000000:00000000 00:00000000 00000000  1337        0 2222 1 0 20 4 30 10 -1\n";
        assert_eq!(
            find_inode(table, "0100007F:9C40", "0100007F:3AA4"),
            Some(2222)
        );
        assert_eq!(find_inode(table, "0100007F:9C41", "0100007F:3AA4"), None);
    }

    #[test]
    fn what_proc_cannot_show_is_not_ours() {
        let listener: SocketAddr = "127.0.0.1:15012".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   1: 0100007F:9C40 0100007F:3AA4 01 00000000:00000000 00:00000000 00000000  1337        0 2222 1 0 20 4 30 10 -1\n";
        let ours = || Some(vec!["pipe:[1]".to_string(), "socket:[2222]".to_string()]);
        if cfg!(target_endian = "little") {
            assert!(owns(Some(table), peer, listener, ours));
        }
        // An unreadable table, a socket not in it, unreadable descriptors,
        // or a socket held by someone else: refused.
        assert!(!owns(None, peer, listener, ours));
        let other: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert!(!owns(Some(table), other, listener, ours));
        assert!(!owns(Some(table), peer, listener, || None));
        assert!(!owns(Some(table), peer, listener, || Some(vec![
            "socket:[1]".into()
        ])));
    }

    #[test]
    fn a_connection_from_this_process_is_recognised() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(is_own_socket(addr, peer));
    }

    #[test]
    fn a_connection_from_another_process_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // bash's /dev/tcp opens the connection from a child process.
        let mut child = std::process::Command::new("bash")
            .args([
                "-c",
                &format!("exec 3<>/dev/tcp/127.0.0.1/{}; sleep 10", addr.port()),
            ])
            .spawn()
            .expect("bash");
        let (_server_side, peer) = listener.accept().unwrap();
        let own = is_own_socket(addr, peer);
        let _ = child.kill();
        let _ = child.wait();
        assert!(!own, "{peer} was taken for this process's socket");
    }
}
