//! New pods' shim daemons are forked from the node fork server, which has WasmEdge loaded
//! already; `start` starts it on demand, and again when it died. Between requests it keeps a
//! standby daemon forked ahead, which the next new pod gets. A test binary of its own: it
//! kills the node fork server every other test's containers come from.

use std::time::{Duration, Instant};

use wshim_e2e::*;

/// This checkout's node fork servers.
fn node_servers() -> Vec<i32> {
    let daemon = repo().join("target/env/release/containerd-shim-wasmedge-v1-daemon node-server");
    let daemon = daemon.to_str().unwrap();
    std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).filter(|p| cmdline(*p).starts_with(daemon)).collect()
}

/// The processes whose parent is `pid`.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).filter(|p| ppid_or_0(*p) == pid).collect()
}

fn ppid_or_0(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| s.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

/// The node fork server's standby daemon (waiting for a request), once there is one.
fn standby_of(server: i32) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let daemon = repo().join("target/env/release/containerd-shim-wasmedge-v1-daemon standby");
        let found = children(server).into_iter().find(|c| cmdline(*c).starts_with(daemon.to_str().unwrap()));
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The container fork server under a shim daemon (a standby forks it right after it started).
fn fork_server_of(daemon: i32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let fs = children(daemon).into_iter().filter(|c| cmdline(*c).split(' ').next().is_some_and(|a0| a0.ends_with("-fork-server"))).collect::<Vec<_>>();
        if fs.len() == 1 {
            return fs[0];
        }
        assert!(Instant::now() < deadline, "one fork server under daemon {daemon} ({}): {fs:?}", cmdline(daemon));
        std::thread::sleep(Duration::from_millis(20));
    }
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

    // Idle, the server forks a standby daemon, with its fork server already forked; the next
    // new pod gets that process, and its fork server is renamed after the pod's shim.
    let standby = standby_of(server).expect("a standby daemon under the node fork server");
    let standby_fs = fork_server_of(standby);
    assert!(cmdline(standby_fs).contains("-fork-server standby "), "{}", cmdline(standby_fs));
    let id2 = "e2e-node-c";
    let r = run_detached(&["--platform", "wasi/wasm", &img], id2, &[], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    wait_status(id2, "RUNNING", 10);
    assert_eq!(daemon_pids(id2), vec![standby], "the new pod's daemon is the standby");
    assert_eq!(fork_server_of(standby), standby_fs);
    assert!(cmdline(standby_fs).contains(&format!("-id {id2} ")), "fork server renamed after its shim: {}", cmdline(standby_fs));
    let hello = run_wasm("hello", "e2e-node-d", &[], &[]);
    assert_eq!(hello.code, 0, "{hello:?}");
    let standby = standby_of(server).expect("a new standby after the last was taken");
    let standby_fs = fork_server_of(standby);

    // Running containers do not need it; the next start brings up a new one.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server), nix::sys::signal::Signal::SIGKILL).unwrap();
    // Its standby (and the standby's fork server) see the server gone and exit.
    let deadline = Instant::now() + Duration::from_secs(3);
    while [standby, standby_fs].iter().any(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) {
        assert!(Instant::now() < deadline, "standby {standby} ({}) or its fork server {standby_fs} outlived the node fork server", cmdline(standby));
        std::thread::sleep(Duration::from_millis(20));
    }
    let hello = run_wasm("hello", "e2e-node-b", &[], &[]);
    assert_eq!(hello.code, 0, "{hello:?}");
    assert_eq!(hello.stdout, "Hello from WebAssembly on wasmedge-shim!\n");
    let servers = node_servers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_ne!(servers[0], server);

    // An upgrade: the daemon binary replaced (here by a copy of itself) while the server
    // runs. The server answers the next `start` "stale" and exits; `start` starts a new one,
    // which forks the daemon (no exec'd daemon, whose parent would be gone).
    let exe = repo().join("target/env/release/containerd-shim-wasmedge-v1-daemon");
    let copy = exe.with_extension("upgrade-copy");
    std::fs::copy(&exe, &copy).unwrap();
    std::fs::rename(&copy, &exe).unwrap();
    let old = servers[0];
    let id3 = "e2e-node-e";
    let r = run_detached(&["--platform", "wasi/wasm", &img], id3, &[], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    wait_status(id3, "RUNNING", 10);
    let servers = node_servers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_ne!(servers[0], old, "the stale server exited");
    let daemons = daemon_pids(id3);
    assert_eq!(daemons.iter().map(|d| ppid(*d)).collect::<Vec<_>>(), vec![servers[0]], "the new pod's daemon comes from the new server");
    kill_and_remove(id3);

    assert_eq!(task_status(id).map(|s| s.1), Some("RUNNING".to_string()));
    assert_eq!(task_status(id2).map(|s| s.1), Some("RUNNING".to_string()));
    kill_and_remove(id);
    kill_and_remove(id2);
}
