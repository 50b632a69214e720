//! Embeds the protobuf descriptors of every message `envoy-types` was
//! generated from as `OUT_DIR/envoy_all_descriptors.bin`, so [`crate::json`]
//! can render any Envoy resource, including every `Any` nested inside it,
//! in proto3 JSON (weftd's `/debug/config_dump`). Finding and reading the
//! set is `weft_envoy_descriptors`' job.

use std::path::PathBuf;

fn main() {
    weft_envoy_descriptors::rerun_if_changed();
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let set = weft_envoy_descriptors::load(&manifest);
    weft_envoy_descriptors::write_out(&set, "envoy_all_descriptors.bin");
}
