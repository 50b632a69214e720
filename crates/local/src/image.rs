//! Image → program mapping. There is no container runtime in the local
//! mesh: a container's image names a local program instead.
//!
//! - Weft's own images are built in ([`BUILTIN`]): their entrypoint and the
//!   programs they "contain" are Weft's binaries (`weft`, `weft-proxy`),
//!   found next to the running `weft` (or in `$WEFT_BIN_DIR`).
//! - Anything else needs the pod annotation [`COMMAND_ANNOTATION`]
//!   (`weft.dev/command`, or `weft.dev/command.CONTAINER` for one container
//!   of several): the host command line that stands for the image's
//!   entrypoint, as a JSON list (`["/usr/sbin/nginx", "-g", "daemon off;"]`)
//!   or a space-separated string. The container's own `command`, when set,
//!   still replaces the entrypoint (as in Kubernetes) and then names a host
//!   program (absolute, or looked up on `$PATH`).
//!
//! Pure: resolution to a file path happens in the runtime.

use serde_json::{Map, Value};

/// Annotation giving the host command for an image without a built-in mapping.
pub const COMMAND_ANNOTATION: &str = "weft.dev/command";

/// One built-in image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinImage {
    /// The image repository, without registry host and tag.
    pub repository: &'static str,
    /// The image's entrypoint.
    pub entrypoint: &'static [&'static str],
    /// Weft binaries the image holds (what `command[0]` may name).
    pub binaries: &'static [&'static str],
}

/// Weft's images. `weft-proxy` matches any registry (the injector's default
/// is `ghcr.io/weft-mesh/weft-proxy`), and Istio's `proxyv2` maps to it too so
/// manifests injected by istioctl run unchanged.
pub const BUILTIN: &[BuiltinImage] = &[
    BuiltinImage {
        repository: "weft/demo-http",
        entrypoint: &["weft", "app", "http"],
        binaries: &["weft"],
    },
    BuiltinImage {
        repository: "weft/demo-tcp",
        entrypoint: &["weft", "app", "tcp"],
        binaries: &["weft"],
    },
    BuiltinImage {
        repository: "weft/demo-load",
        entrypoint: &["weft", "app", "load"],
        binaries: &["weft"],
    },
    BuiltinImage {
        repository: "weft/weft",
        entrypoint: &["weft"],
        binaries: &["weft"],
    },
    BuiltinImage {
        repository: "weft-mesh/weft-proxy",
        entrypoint: &["weft-proxy"],
        binaries: &["weft-proxy", "pilot-agent", "istio-iptables"],
    },
    BuiltinImage {
        repository: "istio/proxyv2",
        entrypoint: &["weft-proxy"],
        binaries: &["weft-proxy", "pilot-agent", "istio-iptables"],
    },
];

/// The program of argv[0].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// One of Weft's binaries (`weft`, `weft-proxy`).
    Weft(String),
    /// A host program: an absolute path or a name looked up on `$PATH`.
    Host(String),
}

/// A container's command line after image mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv {
    /// What runs.
    pub program: Program,
    /// Arguments after argv[0] (not yet `$(VAR)`-expanded).
    pub args: Vec<String>,
}

/// Strips the registry host, `docker.io/library/`, the tag and the digest.
pub fn repository(image: &str) -> String {
    let image = image.split('@').next().unwrap_or(image);
    // A tag is a `:` after the last `/`.
    let without_tag = match (image.rfind('/'), image.rfind(':')) {
        (Some(slash), Some(colon)) if colon > slash => &image[..colon],
        (None, Some(colon)) => &image[..colon],
        _ => image,
    };
    let mut parts: Vec<&str> = without_tag.split('/').collect();
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        parts.remove(0);
    }
    if parts.len() == 2 && parts[0] == "library" {
        parts.remove(0);
    }
    parts.join("/")
}

fn builtin(image: &str) -> Option<&'static BuiltinImage> {
    let repo = repository(image);
    BUILTIN.iter().find(|b| {
        b.repository == repo
            || (b.repository.ends_with("/weft-proxy") && repo.ends_with("/weft-proxy"))
            || (b.repository.ends_with("/proxyv2") && repo.ends_with("/proxyv2"))
    })
}

/// Maps one container to its command line. `annotations` are the pod's;
/// the error is the message for field `image` or the annotation.
pub fn map_container(
    container: &Value,
    annotations: &Map<String, Value>,
) -> Result<Argv, (String, String)> {
    let name = container
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let image = container
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let strings = |field: &str| -> Result<Option<Vec<String>>, (String, String)> {
        match container.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    Value::Bool(b) => Ok(b.to_string()),
                    other => Err((field.to_owned(), format!("expected strings, found {other}"))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err((field.to_owned(), format!("expected a list, found {other}"))),
        }
    };
    let command = strings("command")?;
    let args = strings("args")?.unwrap_or_default();
    let per_container = format!("{COMMAND_ANNOTATION}.{name}");
    let annotation = [per_container.as_str(), COMMAND_ANNOTATION]
        .into_iter()
        .find_map(|key| Some((key, annotations.get(key)?)));

    let (entrypoint, binaries): (Vec<String>, Option<&[&str]>) = match (builtin(image), annotation)
    {
        (_, Some((key, value))) => {
            let field = format!("metadata.annotations[{key}]");
            let words = annotation_words(value).map_err(|m| (field.clone(), m))?;
            if words.is_empty() {
                return Err((field, "must name a program".into()));
            }
            (words, None)
        }
        (Some(b), None) => (
            b.entrypoint.iter().map(|s| (*s).to_owned()).collect(),
            Some(b.binaries),
        ),
        (None, None) => {
            if image.is_empty() {
                return Err(("image".into(), "missing".into()));
            }
            return Err((
                "image".into(),
                format!(
                    "image {image:?} has no local program: there is no container runtime in the local mesh; \
                     use one of Weft's images ({}) or annotate the pod with {COMMAND_ANNOTATION}: '[\"/path/to/program\", \"arg\"]' \
                     (or {COMMAND_ANNOTATION}.{name} for this container)",
                    BUILTIN
                        .iter()
                        .map(|b| b.repository)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    };
    let mut argv = command.unwrap_or(entrypoint);
    argv.extend(args);
    let Some(first) = argv.first().cloned() else {
        return Err(("command".into(), "empty command line".into()));
    };
    let program = match binaries {
        Some(bins) => {
            let base = first.rsplit('/').next().unwrap_or(&first);
            if !bins.contains(&base) {
                return Err((
                    "command".into(),
                    format!(
                        "{first:?} is not a program of image {image:?} (it holds: {})",
                        bins.join(", ")
                    ),
                ));
            }
            // Istio's names for the proxy's tools are weft-proxy's subcommands.
            match base {
                "pilot-agent" => Program::Weft("weft-proxy".into()),
                "istio-iptables" => {
                    argv.insert(1, "iptables".into());
                    Program::Weft("weft-proxy".into())
                }
                other => Program::Weft(other.to_owned()),
            }
        }
        None => Program::Host(first),
    };
    argv.remove(0);
    Ok(Argv {
        program,
        args: argv,
    })
}

fn annotation_words(value: &Value) -> Result<Vec<String>, String> {
    let Some(text) = value.as_str() else {
        return Err(format!("expected a string, found {value}"));
    };
    let trimmed = text.trim();
    if trimmed.starts_with('[') {
        return serde_json::from_str::<Vec<String>>(trimmed)
            .map_err(|e| format!("{text:?} is not a JSON list of strings: {e}"));
    }
    Ok(trimmed.split_whitespace().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(container: Value, annotations: Value) -> Result<Argv, (String, String)> {
        map_container(&container, annotations.as_object().unwrap())
    }

    #[test]
    fn repositories_drop_registry_tag_and_digest() {
        assert_eq!(repository("weft/demo-http:latest"), "weft/demo-http");
        assert_eq!(
            repository("ghcr.io/weft-mesh/weft-proxy:0.1.0"),
            "weft-mesh/weft-proxy"
        );
        assert_eq!(repository("docker.io/library/nginx:1.25"), "nginx");
        assert_eq!(repository("localhost:5000/a/b@sha256:00"), "a/b");
        assert_eq!(repository("nginx"), "nginx");
    }

    #[test]
    fn builtin_image_uses_its_binaries() {
        let argv = map(
            json!({"name": "r", "image": "weft/demo-http:latest", "command": ["weft", "app", "http"], "args": ["--version", "v2"]}),
            json!({}),
        )
        .unwrap();
        assert_eq!(argv.program, Program::Weft("weft".into()));
        assert_eq!(argv.args, ["app", "http", "--version", "v2"]);

        // No command: the image's entrypoint.
        let argv = map(
            json!({"name": "r", "image": "weft/demo-tcp", "args": ["--listen", "0.0.0.0:9000"]}),
            json!({}),
        )
        .unwrap();
        assert_eq!(argv.args, ["app", "tcp", "--listen", "0.0.0.0:9000"]);

        let argv = map(
            json!({"name": "istio-init", "image": "ghcr.io/weft-mesh/weft-proxy:0.1.0", "command": ["weft-proxy"], "args": ["iptables", "-p", "15001"]}),
            json!({}),
        )
        .unwrap();
        assert_eq!(argv.program, Program::Weft("weft-proxy".into()));
        assert_eq!(argv.args, ["iptables", "-p", "15001"]);
    }

    #[test]
    fn program_outside_the_image_is_refused() {
        let (field, message) = map(
            json!({"name": "r", "image": "weft/demo-http", "command": ["curl"]}),
            json!({}),
        )
        .unwrap_err();
        assert_eq!(field, "command");
        assert!(
            message.contains("\"curl\" is not a program of image"),
            "{message}"
        );
    }

    #[test]
    fn unmapped_image_says_how_to_map_it() {
        let (field, message) =
            map(json!({"name": "web", "image": "nginx:1.25"}), json!({})).unwrap_err();
        assert_eq!(field, "image");
        assert!(
            message.contains("\"nginx:1.25\" has no local program"),
            "{message}"
        );
        assert!(message.contains("weft.dev/command.web"), "{message}");
    }

    #[test]
    fn annotation_maps_any_image() {
        let argv = map(
            json!({"name": "web", "image": "nginx:1.25", "args": ["-c", "/tmp/n.conf"]}),
            json!({"weft.dev/command": "[\"/usr/sbin/nginx\", \"-g\", \"daemon off;\"]"}),
        )
        .unwrap();
        assert_eq!(argv.program, Program::Host("/usr/sbin/nginx".into()));
        assert_eq!(argv.args, ["-g", "daemon off;", "-c", "/tmp/n.conf"]);

        // The per-container key wins; a plain string is split on spaces.
        let argv = map(
            json!({"name": "web", "image": "busybox"}),
            json!({"weft.dev/command": "/bin/false", "weft.dev/command.web": "/bin/sleep 100"}),
        )
        .unwrap();
        assert_eq!(argv.program, Program::Host("/bin/sleep".into()));
        assert_eq!(argv.args, ["100"]);

        let (field, message) = map(
            json!({"name": "web", "image": "busybox"}),
            json!({"weft.dev/command": "[not json"}),
        )
        .unwrap_err();
        assert_eq!(field, "metadata.annotations[weft.dev/command]");
        assert!(message.contains("not a JSON list"), "{message}");
    }
}
