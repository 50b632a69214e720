//! The routing side of capture, as Istio sets it up next to the rules:
//! for TPROXY, `ip rule add fwmark <mark> lookup <table>` and
//! `ip route add local default dev lo table <table>` per family; with IPv6,
//! the `::6` address on `lo` that inbound passthrough traffic comes from
//! (added with `nodad`, so it is usable at once and a re-run does not put
//! it back into duplicate address detection).
//! Adding is idempotent; removing touches only these exact entries.

use crate::config::CaptureConfig;
use crate::error::CaptureError;
use crate::exec;
use crate::rules::Family;

fn flag(family: Family) -> &'static str {
    match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

fn families(cfg: &CaptureConfig) -> Vec<Family> {
    let mut out = vec![Family::V4];
    if cfg.enable_ipv6 {
        out.push(Family::V6);
    }
    out
}

/// The `ip` commands [`add`] runs, for logs and dry runs.
pub fn add_commands(cfg: &CaptureConfig) -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    let (mark, table) = (
        cfg.tproxy_mark.to_string(),
        cfg.tproxy_route_table.to_string(),
    );
    if cfg.enable_ipv6 {
        cmds.push(
            ["-6", "addr", "add", "::6/128", "dev", "lo", "nodad"]
                .map(String::from)
                .to_vec(),
        );
    }
    if cfg.needs_tproxy_route() {
        for family in families(cfg) {
            let f = flag(family).to_owned();
            cmds.push(vec![
                f.clone(),
                "rule".into(),
                "add".into(),
                "fwmark".into(),
                mark.clone(),
                "lookup".into(),
                table.clone(),
            ]);
            cmds.push(vec![
                f,
                "route".into(),
                "replace".into(),
                "local".into(),
                "default".into(),
                "dev".into(),
                "lo".into(),
                "table".into(),
                table.clone(),
            ]);
        }
    }
    cmds
}

/// Deletes every `ip rule` with exactly our fwmark and table (so a re-run
/// never leaves two copies). Missing rules are fine.
fn delete_rules(family: Family, mark: &str, table: &str) -> Result<(), CaptureError> {
    for _ in 0..64 {
        let out = exec::run(
            "ip",
            &[flag(family), "rule", "del", "fwmark", mark, "lookup", table],
            None,
        )?;
        if !out.success {
            break;
        }
    }
    Ok(())
}

/// Adds the routing entries the configuration needs.
pub fn add(cfg: &CaptureConfig) -> Result<(), CaptureError> {
    if !cfg.enable_ipv6 && !cfg.needs_tproxy_route() {
        return Ok(());
    }
    exec::require_tool("ip", "iproute2")?;
    let (mark, table) = (
        cfg.tproxy_mark.to_string(),
        cfg.tproxy_route_table.to_string(),
    );
    if cfg.needs_tproxy_route() {
        for family in families(cfg) {
            delete_rules(family, &mark, &table)?;
        }
    }
    for cmd in add_commands(cfg) {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        if args[..3] == ["-6", "addr", "add"] {
            // Present already (a re-run): leave it alone. Re-adding or
            // replacing it would restart duplicate address detection and
            // make it briefly unusable.
            let out = exec::run("ip", &args, None)?;
            let exists =
                out.stderr.contains("File exists") || out.stderr.contains("already assigned");
            if out.success || exists {
                continue;
            }
            return Err(exec::failure("ip", &args, &out));
        }
        exec::run_ok("ip", &args, None).map_err(|e| match e {
            CaptureError::CommandFailed {
                command,
                status,
                stderr,
            } if stderr.contains("not up") => CaptureError::CommandFailed {
                command,
                status,
                stderr: format!("{stderr} (hint: bring loopback up: ip link set lo up)"),
            },
            other => other,
        })?;
    }
    Ok(())
}

/// Removes the routing entries [`add`] creates: the fwmark rule and the
/// local route of our table in both families (whatever the mode: they are
/// ours by mark and table number), and `::6` on `lo` when `ipv6`.
/// Entries that are already gone are fine.
pub fn remove(cfg: &CaptureConfig, ipv6: bool) -> Result<(), CaptureError> {
    remove_family(cfg, Family::V4)?;
    remove_family(cfg, Family::V6)?;
    if ipv6 {
        remove_ipv6_address()?;
    }
    Ok(())
}

/// Removes one family's fwmark rule and local route of our table.
pub fn remove_family(cfg: &CaptureConfig, family: Family) -> Result<(), CaptureError> {
    exec::require_tool("ip", "iproute2")?;
    let (mark, table) = (
        cfg.tproxy_mark.to_string(),
        cfg.tproxy_route_table.to_string(),
    );
    delete_rules(family, &mark, &table)?;
    let _ = exec::run(
        "ip",
        &[
            flag(family),
            "route",
            "del",
            "local",
            "default",
            "dev",
            "lo",
            "table",
            &table,
        ],
        None,
    )?;
    Ok(())
}

/// Removes `::6/128` from `lo` (absent already is fine).
pub fn remove_ipv6_address() -> Result<(), CaptureError> {
    exec::require_tool("ip", "iproute2")?;
    let _ = exec::run("ip", &["-6", "addr", "del", "::6/128", "dev", "lo"], None)?;
    Ok(())
}
