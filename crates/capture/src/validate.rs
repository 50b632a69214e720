//! `--run-validation`: check with a real connection that capture works in
//! this network namespace, as Istio's `istio-validation` init container does
//! when the CNI plugin (not the init container) set the rules up.
//!
//! Listeners on 127.0.0.1 at the outbound and inbound capture ports read
//! the original destination (`SO_ORIGINAL_DST`) of what they accept; a
//! client connects to 127.0.0.6:<probe port> (from the proxy's uid, this
//! connection is captured back to the inbound port). Validation passes when
//! a listener sees the probe port as the original destination. A pod whose
//! primary address is IPv6 (with IPv6 capture on) is checked over `::1` and
//! `::6` instead, like Istio.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::config::CaptureConfig;
use crate::error::CaptureError;

/// The original destination port of an accepted (redirected) connection.
fn original_port(stream: &TcpStream, v6: bool) -> Option<u16> {
    use nix::sys::socket::{getsockopt, sockopt};
    if v6 {
        let addr = getsockopt(stream, sockopt::Ip6tOriginalDst).ok()?;
        Some(u16::from_be(addr.sin6_port))
    } else {
        let addr = getsockopt(stream, sockopt::OriginalDst).ok()?;
        Some(u16::from_be(addr.sin_port))
    }
}

/// Connects to `target` from `source` (port chosen by the kernel), as
/// Istio's probe does: left to itself the kernel would pick `::6` as the
/// source for `::6`, which the rules deliberately do not capture.
fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::AsRawFd as _;

    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, bind, connect, socket,
    };
    let family = match source {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    match (SocketAddr::new(source, 0), target) {
        (SocketAddr::V4(src), SocketAddr::V4(dst)) => {
            bind(fd.as_raw_fd(), &SockaddrIn::from(src))?;
            connect(fd.as_raw_fd(), &SockaddrIn::from(dst))?;
        }
        (SocketAddr::V6(src), SocketAddr::V6(dst)) => {
            bind(fd.as_raw_fd(), &SockaddrIn6::from(src))?;
            connect(fd.as_raw_fd(), &SockaddrIn6::from(dst))?;
        }
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "source and target families differ",
            ));
        }
    }
    Ok(TcpStream::from(fd))
}

/// Runs the check; fails after `timeout` without a captured probe.
pub fn run(cfg: &CaptureConfig, probe_port: u16, timeout: Duration) -> Result<(), CaptureError> {
    let v6 = cfg.enable_ipv6 && crate::detect::pod_has_ipv6(false).unwrap_or(false);
    let (listen_ip, target_ip): (IpAddr, IpAddr) = if v6 {
        (
            Ipv6Addr::LOCALHOST.into(),
            Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6).into(),
        )
    } else {
        (
            Ipv4Addr::LOCALHOST.into(),
            Ipv4Addr::new(127, 0, 0, 6).into(),
        )
    };
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut bound = Vec::new();
    for port in [cfg.proxy_port, cfg.inbound_capture_port] {
        let addr = SocketAddr::new(listen_ip, port);
        match TcpListener::bind(addr) {
            Ok(listener) => bound.push((addr, listener)),
            Err(e) => tracing::warn!(%addr, error = %e, "validation cannot listen"),
        }
    }
    if bound.is_empty() {
        return Err(CaptureError::Validation {
            detail: format!(
                "no listener available on {listen_ip} ports {} or {}",
                cfg.proxy_port, cfg.inbound_capture_port
            ),
        });
    }
    for (addr, listener) in bound {
        let done = done_tx.clone();
        tracing::info!(%addr, "validation listening");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let port = original_port(&stream, v6);
                let mut stream = stream;
                let _ = write!(stream, "{}", port.unwrap_or(0));
                if port == Some(probe_port) {
                    let _ = done.send(());
                    return;
                }
            }
        });
    }
    let target = SocketAddr::new(target_ip, probe_port);
    let deadline = Instant::now() + timeout;
    let mut last_error = String::from("no attempt made");
    while Instant::now() < deadline {
        match connect_from(listen_ip, target) {
            Ok(_) => last_error = format!("connected to {target}, but no capture listener saw it"),
            Err(e) => last_error = format!("connecting to {target}: {e}"),
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        if done_rx.recv_timeout(wait).is_ok() {
            tracing::info!("validation passed: traffic capture is in place");
            return Ok(());
        }
    }
    Err(CaptureError::Validation {
        detail: format!(
            "no connection to {target} was captured within {timeout:?} (last attempt: {last_error}); \
             are the rules applied, and does this run as the proxy's uid (-u)?"
        ),
    })
}

/// Parses a Go-style duration as Istio's `--probe-timeout` takes it
/// (`5s`, `500ms`, `1m`, `1m30s`).
pub fn parse_duration(flag: &'static str, value: &str) -> Result<Duration, CaptureError> {
    let bad = || CaptureError::InvalidFlag {
        flag,
        value: value.to_owned(),
        reason: "expected a duration such as 5s, 500ms or 1m30s".into(),
    };
    let mut rest = value.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => number / 1000.0,
            "s" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(seconds).map_err(|_| bad())?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("-", "5s").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_duration("-", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration("-", "1m30s").unwrap(),
            Duration::from_secs(90)
        );
        for bad in ["", "5", "s", "5x", "-1s", "1.2.3s"] {
            let err = parse_duration("--probe-timeout", bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("--probe-timeout"), "{bad}: {err}");
        }
    }
}
