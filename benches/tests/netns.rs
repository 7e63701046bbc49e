//! New network namespaces through the shim's ttrpc API: each task that asks for one gets its
//! own, fresh (only `lo`), whether the fork server made it ahead or clone made it; and the
//! fork server stays in the daemon's.

use std::os::unix::fs::MetadataExt;

use wshim_benches::shim::Workspace;

fn net_ns(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino()
}

/// The interfaces `pid` sees (its namespace's /proc/net/dev).
fn interfaces(pid: u32) -> Vec<String> {
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    dev.lines().skip(2).filter_map(|l| l.split(':').next()).map(|i| i.trim().to_string()).collect()
}

/// The daemon's child whose program name ends in `-fork-server`.
fn fork_server_of(daemon: u32) -> u32 {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let a0 = String::from_utf8_lossy(cmd.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
            ppid == Some(daemon) && a0.ends_with("-fork-server")
        })
        .expect("the daemon's fork server")
}

#[test]
fn every_task_asking_for_a_network_namespace_gets_a_fresh_one_of_its_own() {
    wshim_e2e::require_env();
    let ws = Workspace::new("netns").unwrap();
    let pod = format!("netns-{}", std::process::id());
    let ids: Vec<String> = (0..5).map(|i| format!("net-{i}")).collect();
    let first = ws.bundle(&ids[0], Some(&pod), "sleep.wasm", &[]).unwrap();
    let shim = ws.start_shim(&ids[0], &first).unwrap();
    let daemon = shim.daemon_pid().unwrap();
    let host = net_ns(std::process::id());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut seen = vec![host];
        for id in &ids {
            let b = ws.bundle(id, Some(&pod), "sleep.wasm", &[]).unwrap();
            let pid = shim.create(id, &b, "").unwrap();
            shim.start(id).unwrap();
            let ns = net_ns(pid);
            assert!(!seen.contains(&ns), "{id}: network namespace {ns} is the host's or another task's ({seen:?})");
            seen.push(ns);
            assert_eq!(interfaces(pid), ["lo"], "{id}: a fresh namespace has only lo");
            // Spares are made while the fork server is idle: give it the time, as a pod's
            // containers spaced by milliseconds would.
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert_eq!(net_ns(fork_server_of(daemon)), net_ns(daemon), "after {id}: the fork server is back in the daemon's namespace");
        }
    }));
    for id in &ids {
        if shim.kill(id, 9).is_ok() {
            let _ = shim.wait(id);
        }
        let _ = shim.delete(id);
    }
    let _ = shim.shutdown();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    ws.check_clean().unwrap();
}
