//! The caller's mesh identity as the server side sees it: the `URI=` of the
//! last element of `x-forwarded-client-cert`, the header an Istio-style
//! inbound sidecar sets after terminating mutual TLS. No header means the
//! hop reached the app without a verified client certificate.

/// Extracts the peer URI (e.g. `spiffe://cluster.local/ns/demo/sa/frontend`)
/// from an XFCC header value; `None` when absent or malformed.
pub fn peer_uri(xfcc: &str) -> Option<String> {
    let last = split_unquoted(xfcc, ',').into_iter().last()?;
    split_unquoted(last, ';').into_iter().find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("uri") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// Splits on `sep` outside double quotes (XFCC quotes values with commas).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::peer_uri;

    #[test]
    fn takes_uri_of_the_last_element() {
        let xfcc = "By=spiffe://cluster.local/ns/demo/sa/reviews;Hash=ab12;Subject=\"CN=x,O=y\";URI=spiffe://cluster.local/ns/demo/sa/gateway,By=spiffe://cluster.local/ns/demo/sa/reviews;Hash=cd34;URI=spiffe://cluster.local/ns/demo/sa/frontend";
        assert_eq!(
            peer_uri(xfcc).as_deref(),
            Some("spiffe://cluster.local/ns/demo/sa/frontend")
        );
    }

    #[test]
    fn quoted_commas_do_not_split_elements() {
        let xfcc = "Subject=\"CN=a,OU=b\";URI=spiffe://td/ns/n/sa/s";
        assert_eq!(peer_uri(xfcc).as_deref(), Some("spiffe://td/ns/n/sa/s"));
    }

    #[test]
    fn no_uri_is_none() {
        assert_eq!(peer_uri("By=spiffe://x;Hash=1"), None);
        assert_eq!(peer_uri(""), None);
    }
}
