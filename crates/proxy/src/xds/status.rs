//! The state of the connection to weftd, for the readiness reason
//! (`/healthz/ready` before the first configuration): the last TLS failure
//! of the relay and the last stream error of the ADS client, each cleared
//! when that layer works again.
//!
//! Process-wide, like the certificate source ([`crate::identity`]): one
//! weft-proxy process has one connection to weftd.

use std::sync::Mutex;

#[derive(Debug, Default)]
struct Status {
    address: String,
    connected: bool,
    transport: Option<String>,
    stream: Option<String>,
}

static STATUS: Mutex<Status> = Mutex::new(Status {
    address: String::new(),
    connected: false,
    transport: None,
    stream: None,
});

fn with<T>(f: impl FnOnce(&mut Status) -> T) -> T {
    f(&mut STATUS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Records the address the client connects to (reset of everything else).
pub fn set_address(address: &str) {
    with(|s| {
        *s = Status {
            address: address.to_owned(),
            ..Status::default()
        }
    });
}

/// A TLS connection to weftd failed (`None`: one succeeded).
pub fn set_transport_error(reason: Option<String>) {
    with(|s| s.transport = reason);
}

/// The ADS stream is open (`connected`), or broke with `error`.
pub fn set_stream(connected: bool, error: Option<String>) {
    with(|s| {
        s.connected = connected;
        if connected {
            s.stream = None;
            s.transport = None;
        } else if error.is_some() {
            s.stream = error;
        }
    });
}

/// Why there is no ADS stream to weftd now, or `None` when there is one or
/// nothing was tried yet. A TLS failure is preferred over the stream error
/// it caused.
pub fn problem() -> Option<String> {
    with(|s| {
        if s.connected || s.address.is_empty() {
            return None;
        }
        let why = s.transport.clone().or_else(|| s.stream.clone())?;
        Some(format!("xDS to weftd at {}: {why}", s.address))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_reason_wins_until_a_stream_opens() {
        set_address("127.0.0.1:15012");
        assert_eq!(problem(), None);
        set_transport_error(Some("name mismatch: ...".into()));
        set_stream(false, Some("xDS stream failed: transport error".into()));
        assert_eq!(
            problem().as_deref(),
            Some("xDS to weftd at 127.0.0.1:15012: name mismatch: ...")
        );
        set_stream(true, None);
        assert_eq!(problem(), None);
        set_stream(false, Some("stream reset".into()));
        assert_eq!(
            problem().as_deref(),
            Some("xDS to weftd at 127.0.0.1:15012: stream reset")
        );
    }
}
