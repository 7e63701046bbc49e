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
    // Nothing of the shim's reaches the container (CVE-2024-21626 class): stdio only.
    assert_eq!(field(&ours, "fds"), "0,1,2");
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

#[test]
fn a_module_cannot_reach_the_shim_binary_through_proc_exe() {
    // The wasm process is a clone of the shim daemon: /proc/self/exe is the host's daemon
    // binary. Opening it for writing is the CVE-2019-5736 attack.
    for (id, path) in [("e2e-exe-self", "/proc/self/exe"), ("e2e-exe-1", "/proc/1/exe")] {
        let r = run_wasm("exewrite", id, &[], &["/exewrite.wasm", path]);
        assert_eq!(r.code, 0, "{path}: {r:?}");
        assert!(r.stdout.starts_with("open-for-write=refused"), "{path}: {r:?}");
    }
    // And no other process can reach it: the container process is not dumpable, so even a
    // host process of the container's own uid cannot resolve /proc/PID/exe.
    let img = image("sleep");
    let r = run_detached(&["--platform", "wasi/wasm", &img], "e2e-exe-dumpable", &["--user", "1000:1000"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let pid = wait_status("e2e-exe-dumpable", "RUNNING", 10);
    let peek = std::process::Command::new("setpriv")
        .args(["--reuid", "1000", "--regid", "1000", "--clear-groups", "readlink", &format!("/proc/{pid}/exe")])
        .output()
        .expect("setpriv");
    let uid_line = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap().lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    kill_and_remove("e2e-exe-dumpable");
    assert!(uid_line.split_whitespace().nth(1) == Some("1000"), "the module runs as uid 1000: {uid_line}");
    assert!(!peek.status.success(), "a uid-1000 host process resolved /proc/{pid}/exe: {}", String::from_utf8_lossy(&peek.stdout));
    // The same look at an ordinary (dumpable) uid-1000 process succeeds.
    let mut plain = std::process::Command::new("setpriv").args(["--reuid", "1000", "--regid", "1000", "--clear-groups", "sleep", "5"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let control = std::process::Command::new("setpriv")
        .args(["--reuid", "1000", "--regid", "1000", "--clear-groups", "readlink", &format!("/proc/{}/exe", plain.id())])
        .output()
        .unwrap();
    plain.kill().unwrap();
    plain.wait().unwrap();
    assert!(control.status.success(), "control: {control:?}");
}

#[test]
fn a_pid_namespace_joined_by_path_is_shared() {
    let img = image("sleep");
    assert_eq!(run_detached(&["--platform", "wasi/wasm", &img], "e2e-pidns-owner", &[], &[]).code, 0);
    let owner = wait_status("e2e-pidns-owner", "RUNNING", 10);
    let ns = format!("pid:/proc/{owner}/ns/pid");
    let joined = probe(RUNTIME, "e2e-pidns-joiner", &["--with-ns", &ns]);
    let joined_runc = probe("io.containerd.runc.v2", "e2e-pidns-joiner-runc", &["--with-ns", &ns]);
    kill_and_remove("e2e-pidns-owner");
    assert_ne!(field(&joined, "pid"), "1", "the owner is pid 1 of the shared namespace: {joined:?}");
    assert_ne!(field(&joined_runc, "pid"), "1", "runc joins it the same way: {joined_runc:?}");
    let pid: u32 = field(&joined, "pid").parse().unwrap();
    assert!(pid < 100, "a pid of the pod's namespace, not the host's: {pid}");
}
