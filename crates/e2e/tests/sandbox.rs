//! The sandbox against runc, the reference for native semantics: the same bundle (ctr's
//! default spec, with and without the default seccomp profile) run by both, and the
//! probe's reports compared line by line.

use wshim_e2e::*;

fn probe(runtime: &str, id: &str, extra: &[&str]) -> Vec<String> {
    let rootfs = bundles().join("native/rootfs-probe");
    let r = run_rootfs(runtime, &rootfs, id, extra, &["/probe"]);
    assert_eq!(r.code, 0, "{runtime}: {r:?}");
    r.stdout.lines().map(str::to_string).collect()
}

fn field<'a>(report: &'a [String], key: &str) -> &'a str {
    report.iter().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("no {key} in {report:?}"))
}

#[test]
fn default_spec_matches_runc() {
    let ours = probe(RUNTIME, "e2e-probe-ours", &["--hostname", "probe"]);
    let runc = probe("io.containerd.runc.v2", "e2e-probe-runc", &["--hostname", "probe"]);
    assert_eq!(ours, runc, "ours vs runc");
    assert_eq!(field(&ours, "pid"), "1");
    assert_eq!(field(&ours, "hostname"), "probe");
    assert_eq!(field(&ours, "Seccomp"), "0");
}

#[test]
fn default_seccomp_profile_loads_and_blocks_like_runc() {
    let ours = probe(RUNTIME, "e2e-seccomp-ours", &["--seccomp"]);
    let runc = probe("io.containerd.runc.v2", "e2e-seccomp-runc", &["--seccomp"]);
    assert_eq!(ours, runc, "ours vs runc");
    assert_eq!(field(&ours, "Seccomp"), "2", "a filter is loaded");
    assert_eq!(field(&ours, "keyctl"), "EPERM", "keyctl is refused by the default profile");
}

#[test]
fn a_user_and_rlimits_apply_like_runc() {
    let flags = ["--user", "1000:1000", "--hostname", "probe"];
    let ours = probe(RUNTIME, "e2e-user-ours", &flags);
    let runc = probe("io.containerd.runc.v2", "e2e-user-runc", &flags);
    assert_eq!(ours, runc, "ours vs runc");
    assert_eq!(field(&ours, "uid"), "1000");
    assert_eq!(field(&ours, "CapEff"), "0000000000000000", "a non-root user has no effective capabilities");
}

#[test]
fn wasm_runs_under_the_default_seccomp_profile() {
    let r = run_wasm("hello", "e2e-wasm-seccomp", &["--seccomp"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "Hello from WebAssembly on wasmedge-shim!\n");
    let r = run_wasm("cat", "e2e-wasm-seccomp-status", &["--seccomp"], &["/cat.wasm", "/proc/self/status"]);
    assert!(r.stdout.lines().any(|l| l.replace('\t', " ").split_whitespace().collect::<Vec<_>>() == ["Seccomp:", "2"]), "{r:?}");
}
