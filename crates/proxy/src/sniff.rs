//! Protocol sniffing on the first bytes of a connection (what Envoy's
//! `tls_inspector` and `http_inspector` listener filters do): a pure parser
//! of the peeked bytes. It never consumes data; the caller peeks more until
//! the answer is known or the detection timeout fires.

/// What the first bytes say so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// More bytes are needed to decide.
    NeedMore,
    /// A TLS ClientHello with its SNI and ALPN protocols.
    Tls {
        server_name: Option<String>,
        alpn: Vec<String>,
    },
    /// Plaintext HTTP: "http/1.0", "http/1.1" or "h2c".
    Http(&'static str),
    /// Anything else.
    Other,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Looks at the peeked bytes; `tls` and `http` say which inspectors run.
pub fn sniff(buf: &[u8], tls: bool, http: bool) -> Sniffed {
    if buf.is_empty() {
        return Sniffed::NeedMore;
    }
    if tls && buf[0] == 0x16 {
        match client_hello(buf) {
            Some(s) => return s,
            None if !http => return Sniffed::Other,
            None => {}
        }
    }
    if http {
        return detect_http(buf);
    }
    Sniffed::Other
}

/// Envoy's http_inspector: an HTTP/2 preface, or an HTTP/1 request line.
pub fn detect_http(buf: &[u8]) -> Sniffed {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniffed::Http("h2c")
        } else {
            Sniffed::NeedMore
        };
    }
    let line_end = buf.windows(2).position(|w| w == b"\r\n");
    let line = match line_end {
        Some(i) => &buf[..i],
        None => buf,
    };
    // The method must be one of the known ones (checked as soon as possible).
    let method_end = line.iter().position(|&b| b == b' ');
    let method = &line[..method_end.unwrap_or(line.len())];
    let prefix_ok = METHODS.iter().any(|m| {
        let m = m.as_bytes();
        if method_end.is_some() {
            method == m
        } else {
            m.starts_with(method)
        }
    });
    if !prefix_ok {
        return Sniffed::Other;
    }
    let Some(end) = line_end else {
        return if buf.len() > 8192 {
            Sniffed::Other
        } else {
            Sniffed::NeedMore
        };
    };
    let line = &buf[..end];
    let mut parts = line.split(|&b| b == b' ');
    let (_m, target, version) = (parts.next(), parts.next(), parts.next());
    if parts.next().is_some() || target.is_none_or(|t| t.is_empty()) {
        return Sniffed::Other;
    }
    match version {
        Some(b"HTTP/1.1") => Sniffed::Http("http/1.1"),
        Some(b"HTTP/1.0") => Sniffed::Http("http/1.0"),
        _ => Sniffed::Other,
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn u16(&mut self) -> Option<usize> {
        Some(((self.u8()? as usize) << 8) | self.u8()? as usize)
    }
    fn u24(&mut self) -> Option<usize> {
        Some(((self.u8()? as usize) << 16) | self.u16()?)
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
}

/// Parses a ClientHello. `None`: not TLS; `Some(NeedMore)`: incomplete.
pub fn client_hello(buf: &[u8]) -> Option<Sniffed> {
    if buf.len() < 5 {
        return (buf[0] == 0x16 && buf.get(1).is_none_or(|&v| v == 3)).then_some(Sniffed::NeedMore);
    }
    if buf[0] != 0x16 || buf[1] != 3 {
        return None;
    }
    let record_len = ((buf[3] as usize) << 8) | buf[4] as usize;
    if buf.len() < 5 + record_len.min(4) {
        return Some(Sniffed::NeedMore);
    }
    // The handshake may span records; only the first is parsed, which
    // holds the whole ClientHello in practice (≤ 16 KiB).
    let body = &buf[5..buf.len().min(5 + record_len)];
    let mut r = Reader { buf: body, pos: 0 };
    if r.u8()? != 1 {
        return None;
    }
    let hs_len = r.u24()?;
    if body.len() < 4 + hs_len {
        return if buf.len() < 5 + record_len {
            Some(Sniffed::NeedMore)
        } else {
            None
        };
    }
    let mut r = Reader {
        buf: &body[4..4 + hs_len],
        pos: 0,
    };
    r.take(2 + 32)?; // version, random
    let sid = r.u8()? as usize;
    r.take(sid)?;
    let cs = r.u16()?;
    r.take(cs)?;
    let comp = r.u8()? as usize;
    r.take(comp)?;
    let mut server_name = None;
    let mut alpn = Vec::new();
    if r.pos < r.buf.len() {
        let ext_len = r.u16()?;
        let mut e = Reader {
            buf: r.take(ext_len)?,
            pos: 0,
        };
        while e.pos < e.buf.len() {
            let ty = e.u16()?;
            let len = e.u16()?;
            let data = e.take(len)?;
            let mut d = Reader { buf: data, pos: 0 };
            match ty {
                0 => {
                    let list = d.u16()?;
                    let mut l = Reader {
                        buf: d.take(list)?,
                        pos: 0,
                    };
                    while l.pos < l.buf.len() {
                        let kind = l.u8()?;
                        let n = l.u16()?;
                        let name = l.take(n)?;
                        if kind == 0 && server_name.is_none() {
                            server_name = std::str::from_utf8(name)
                                .ok()
                                .map(|s| s.to_ascii_lowercase());
                        }
                    }
                }
                16 => {
                    let list = d.u16()?;
                    let mut l = Reader {
                        buf: d.take(list)?,
                        pos: 0,
                    };
                    while l.pos < l.buf.len() {
                        let n = l.u8()? as usize;
                        if let Ok(p) = std::str::from_utf8(l.take(n)?) {
                            alpn.push(p.to_owned());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Some(Sniffed::Tls { server_name, alpn })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        let mut ext = Vec::new();
        let name = sni.as_bytes();
        ext.extend_from_slice(&[0, 0]);
        ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
        ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
        ext.extend_from_slice(name);
        let mut list = Vec::new();
        for a in alpn {
            list.push(a.len() as u8);
            list.extend_from_slice(a.as_bytes());
        }
        ext.extend_from_slice(&[0, 16]);
        ext.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
        ext.extend_from_slice(&list);
        let mut hs = vec![3, 3];
        hs.extend_from_slice(&[7; 32]);
        hs.push(0);
        hs.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
        hs.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        hs.extend_from_slice(&ext);
        let mut msg = vec![1];
        msg.extend_from_slice(&(hs.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&hs);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        rec.extend_from_slice(&msg);
        rec
    }

    #[test]
    fn reads_sni_and_alpn_from_a_client_hello() {
        let h = hello("Reviews.Default.svc", &["h2", "http/1.1"]);
        assert_eq!(
            sniff(&h, true, true),
            Sniffed::Tls {
                server_name: Some("reviews.default.svc".into()),
                alpn: vec!["h2".into(), "http/1.1".into()]
            }
        );
        for cut in [1, 3, 5, 20, h.len() - 1] {
            assert_eq!(
                sniff(&h[..cut], true, false),
                Sniffed::NeedMore,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn detects_http_versions_and_other_protocols() {
        assert_eq!(
            sniff(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true, true),
            Sniffed::Http("http/1.1")
        );
        assert_eq!(
            sniff(b"POST /x HTTP/1.0\r\n", false, true),
            Sniffed::Http("http/1.0")
        );
        assert_eq!(sniff(H2_PREFACE, false, true), Sniffed::Http("h2c"));
        assert_eq!(sniff(b"PRI * HT", false, true), Sniffed::NeedMore);
        assert_eq!(sniff(b"GE", false, true), Sniffed::NeedMore);
        assert_eq!(
            sniff(b"\x00\x00\x00\x0a\x03mysql", true, true),
            Sniffed::Other
        );
        assert_eq!(sniff(b"GET / SPDY/3\r\n", false, true), Sniffed::Other);
        assert_eq!(sniff(b"hello", false, false), Sniffed::Other);
    }
}
