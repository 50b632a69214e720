//! Protocol selection as Istio does it: from the port's `appProtocol` or the
//! prefix of its name (`http`, `http2`, `grpc` → HTTP; `tcp`, `tls`,
//! `https`, `mongo`, `mysql`, `redis` → TCP), and sniffing for everything
//! else (a listener with `http_inspector` and one filter chain per outcome).

use weft_api::validate::Protocol;

/// How a proxy handles a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListenerProtocol {
    /// HTTP/1.1 or HTTP/2: HTTP connection manager with RDS.
    Http,
    /// Opaque TCP: tcp_proxy.
    Tcp,
    /// Unknown: sniff HTTP vs. anything else per connection.
    Auto,
    /// Not proxied (UDP).
    None,
}

/// How a port's protocol is served.
pub fn listener_protocol(p: Protocol) -> ListenerProtocol {
    match p {
        Protocol::Http
        | Protocol::Http2
        | Protocol::Grpc
        | Protocol::GrpcWeb
        | Protocol::HttpProxy => ListenerProtocol::Http,
        Protocol::Https
        | Protocol::Tls
        | Protocol::Tcp
        | Protocol::Mongo
        | Protocol::Redis
        | Protocol::Mysql => ListenerProtocol::Tcp,
        Protocol::Udp => ListenerProtocol::None,
        Protocol::Unsupported => ListenerProtocol::Auto,
    }
}

/// Whether upstream connections speak HTTP/2 (`http2`, `grpc`, `grpc-web`).
pub fn is_http2(p: Protocol) -> bool {
    matches!(p, Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_select_protocols() {
        let p =
            |name: &str, app: Option<&str>| listener_protocol(Protocol::from_port(Some(name), app));
        assert_eq!(p("http-web", None), ListenerProtocol::Http);
        assert_eq!(p("grpc", None), ListenerProtocol::Http);
        assert_eq!(p("http2", None), ListenerProtocol::Http);
        assert_eq!(p("tcp-db", None), ListenerProtocol::Tcp);
        assert_eq!(p("mysql", None), ListenerProtocol::Tcp);
        assert_eq!(p("mongo", None), ListenerProtocol::Tcp);
        assert_eq!(p("tls", None), ListenerProtocol::Tcp);
        assert_eq!(p("web", None), ListenerProtocol::Auto);
        assert_eq!(p("", None), ListenerProtocol::Auto);
        assert_eq!(p("web", Some("http")), ListenerProtocol::Http);
        assert_eq!(p("http", Some("tcp")), ListenerProtocol::Tcp);
    }
}
