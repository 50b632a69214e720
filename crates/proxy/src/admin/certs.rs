//! Envoy's admin `/certs`: the certificates the proxy holds, here the
//! workload certificate (`default`) and the mesh roots (`ROOTCA`) from the
//! certificate source, with serial numbers, SANs and validity in Envoy's
//! field names.

use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One certificate in Envoy's `CertificateDetails` shape.
pub fn details(der: &CertificateDer<'_>, now: SystemTime) -> Value {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return json!({"path": "<inline>", "error": "not a parsable X.509 certificate"});
    };
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            use x509_parser::extensions::GeneralName;
            match name {
                GeneralName::URI(u) => sans.push(json!({"uri": u})),
                GeneralName::DNSName(d) => sans.push(json!({"dns": d})),
                GeneralName::IPAddress(ip) => {
                    let ip: Option<std::net::IpAddr> = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).ok().map(Into::into),
                        16 => <[u8; 16]>::try_from(*ip).ok().map(Into::into),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        sans.push(json!({"ip_address": ip.to_string()}));
                    }
                }
                _ => {}
            }
        }
    }
    let not_after = cert.validity().not_after.timestamp().max(0);
    let expires = UNIX_EPOCH + Duration::from_secs(not_after as u64);
    let days = expires
        .duration_since(now)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    json!({
        "path": "<inline>",
        "serial_number": cert.raw_serial_as_string().replace(':', ""),
        "subject_alt_names": sans,
        "days_until_expiration": days.to_string(),
        "valid_from": rfc3339(cert.validity().not_before.timestamp()),
        "expiration_time": rfc3339(not_after),
    })
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The body of `/certs`.
pub fn certs() -> Value {
    let now = SystemTime::now();
    let Some(w) = crate::identity::current() else {
        return json!({"certificates": []});
    };
    let ca: Vec<Value> = w.roots().iter().map(|c| details(c, now)).collect();
    let chain: Vec<Value> = w
        .certified_key()
        .map(|k| k.cert.iter().map(|c| details(c, now)).collect())
        .unwrap_or_default();
    json!({"certificates": [{"ca_cert": ca, "cert_chain": chain}]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
