//! New pods' shim daemons are forked from the node fork server, which has WasmEdge loaded
//! already; `start` starts it on demand, and again when it died. A test binary of its own:
//! it kills the node fork server every other test's containers come from.

use std::time::Duration;

use wshim_e2e::*;

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).unwrap_or_default()
}

fn ppid(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap().trim().parse().unwrap()
}

/// This checkout's node fork servers.
fn node_servers() -> Vec<i32> {
    let daemon = repo().join("target/env/release/containerd-shim-wasmedge-v1-daemon node-server");
    let daemon = daemon.to_str().unwrap();
    std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).filter(|p| cmdline(*p).starts_with(daemon)).collect()
}

#[test]
fn daemons_come_from_the_node_fork_server_which_is_restarted_when_it_died() {
    let img = image("sleep");
    let id = "e2e-node-a";
    let r = run_detached(&["--platform", "wasi/wasm", &img], id, &[], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    wait_status(id, "RUNNING", 10);
    let daemons = daemon_pids(id);
    assert_eq!(daemons.len(), 1, "{daemons:?}");
    let server = ppid(daemons[0]);
    assert_eq!(node_servers(), vec![server], "the daemon's parent is the one node fork server: {}", cmdline(server));

    // Running containers do not need it; the next start brings up a new one.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server), nix::sys::signal::Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let hello = run_wasm("hello", "e2e-node-b", &[], &[]);
    assert_eq!(hello.code, 0, "{hello:?}");
    assert_eq!(hello.stdout, "Hello from WebAssembly on wasmedge-shim!\n");
    let servers = node_servers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_ne!(servers[0], server);

    assert_eq!(task_status(id).map(|s| s.1), Some("RUNNING".to_string()));
    kill_and_remove(id);
}
