//! Protocol sniffing (tls_inspector / http_inspector) on arbitrary first
//! bytes: must never panic, and a longer prefix never turns a decided
//! answer back into "need more".
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::sniff::{Sniffed, sniff};

fuzz_target!(|data: &[u8]| {
    for (tls, http) in [(true, true), (true, false), (false, true)] {
        let full = sniff(data, tls, http);
        if let Some(cut) = data.len().checked_sub(1) {
            let shorter = sniff(&data[..cut], tls, http);
            if !matches!(shorter, Sniffed::NeedMore) && matches!(full, Sniffed::NeedMore) {
                panic!("decided on a prefix, undecided on more bytes: {shorter:?}");
            }
        }
    }
});
