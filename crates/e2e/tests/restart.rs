//! Restarting containerd while containers run leaves them running; the new containerd finds
//! their shims again and can still signal, wait for and delete them. A test binary of its
//! own: it restarts the containerd every other test uses.

use std::process::Command;

use wshim_e2e::*;

#[test]
fn containers_survive_a_containerd_restart() {
    let img = image("sleep");
    let id = "e2e-restart";
    let r = run_detached(&["--platform", "wasi/wasm", &img], id, &[], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let pid = wait_status(id, "RUNNING", 10);
    let daemons = daemon_pids(id);
    assert_eq!(daemons.len(), 1, "{daemons:?}");

    let out = Command::new(repo().join("packaging/containerd/restart.sh")).output().expect("restart containerd");
    assert!(out.status.success(), "restart: {}", String::from_utf8_lossy(&out.stderr));

    // Same process, same shim, known to the new containerd.
    assert_eq!(task_status(id), Some((pid, "RUNNING".to_string())), "after the restart");
    assert_eq!(daemon_pids(id), daemons, "the shim was replaced");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    // Signals still reach it; its exit (status and event) reaches the new containerd.
    let (d, seen) = with_events(|| {
        let k = ctr(&["tasks", "kill", "-s", "SIGTERM", id]);
        assert_eq!(k.code, 0, "{k:?}");
        wait_status(id, "STOPPED", 10);
        ctr(&["tasks", "delete", id])
    });
    assert_eq!(d.code, 0, "{d:?}");
    assert!(d.stderr.contains("exit code 143"), "{d:?}");
    for topic in ["/tasks/exit", "/tasks/delete"] {
        assert!(seen.lines().any(|l| l.contains(topic) && l.contains(id)), "no {topic} event for {id} after the restart:\n{seen}");
    }
    ctr(&["containers", "rm", id]);
    assert_nothing_left(id);
}
