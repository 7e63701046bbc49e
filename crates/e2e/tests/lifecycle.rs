//! The task lifecycle through containerd: signals, pause/resume, pods sharing a shim, a
//! killed shim cleaned up, events, and a native pause container.

use std::time::Duration;

use wshim_e2e::*;

#[test]
fn sigterm_stops_a_busy_wasm_loop_with_143() {
    let r = signal_running("loop", "e2e-term-loop", "SIGTERM");
    assert_eq!(r.code, 143, "{r:?}");
    assert_eq!(r.stdout, "looping\n");
}

#[test]
fn sigterm_stops_a_wasm_program_sleeping_in_poll_oneoff() {
    let r = signal_running("sleep", "e2e-term-sleep", "SIGTERM");
    assert_eq!(r.code, 143, "{r:?}");
}

#[test]
fn sigkill_gives_137() {
    let r = signal_running("sleep", "e2e-kill", "SIGKILL");
    assert_eq!(r.code, 137, "{r:?}");
}

#[test]
fn pause_and_resume_freeze_the_cgroup() {
    // A pure-wasm loop: freezing interrupts WasmEdge's poll_oneoff with EINTR (see the
    // note on issue 4), so a sleeping program would not show that resume resumes.
    let img = image("loop");
    let r = run_detached(&["--platform", "wasi/wasm", &img], "e2e-pause", &[], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    wait_status("e2e-pause", "RUNNING", 10);
    assert_eq!(ctr(&["tasks", "pause", "e2e-pause"]).code, 0);
    wait_status("e2e-pause", "PAUSED", 5);
    let state = std::fs::read_to_string("/sys/fs/cgroup/freezer/default/e2e-pause/freezer.state").unwrap();
    assert_eq!(state.trim(), "FROZEN");
    let again = ctr(&["tasks", "pause", "e2e-pause"]);
    assert_ne!(again.code, 0, "pausing a paused task is refused: {again:?}");
    assert_eq!(ctr(&["tasks", "resume", "e2e-pause"]).code, 0);
    wait_status("e2e-pause", "RUNNING", 5);
    // SIGKILL of a paused task must not hang in the freezer.
    assert_eq!(ctr(&["tasks", "pause", "e2e-pause"]).code, 0);
    kill_and_remove("e2e-pause");
}

#[test]
fn a_pods_containers_share_one_shim() {
    let img = image("sleep");
    let pod = ["--annotation", "io.kubernetes.cri.sandbox-id=e2e-pod-a"];
    assert_eq!(run_detached(&["--platform", "wasi/wasm", &img], "e2e-pod-a", &pod, &[]).code, 0);
    assert_eq!(run_detached(&["--platform", "wasi/wasm", &img], "e2e-pod-b", &pod, &[]).code, 0);
    let pid_a = wait_status("e2e-pod-a", "RUNNING", 10);
    let pid_b = wait_status("e2e-pod-b", "RUNNING", 10);
    assert_ne!(pid_a, pid_b);
    let daemons = daemon_pids("e2e-pod-a");
    assert_eq!(daemons.len(), 1, "one daemon for the pod: {:?}", shims_of("e2e-pod-a"));
    assert!(daemon_pids("e2e-pod-b").is_empty(), "no second daemon: {:?}", shims_of("e2e-pod-b"));
    // Both containers are children of that one daemon, and `ps` shows their own command.
    for pid in [pid_a, pid_b] {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(cmdline.starts_with(b"/sleep.wasm\0"), "{}", String::from_utf8_lossy(&cmdline));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ppid: i32 = stat.rsplit(')').next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(ppid, daemons[0], "container {pid}'s parent");
    }
    // The shim stays while the pod has a container, and goes with the last.
    ctr(&["tasks", "kill", "-s", "SIGKILL", "e2e-pod-b"]);
    wait_status("e2e-pod-b", "STOPPED", 10);
    remove("e2e-pod-b");
    assert_eq!(daemon_pids("e2e-pod-a"), daemons, "the daemon serves the rest of the pod");
    assert_eq!(task_status("e2e-pod-a").unwrap().1, "RUNNING");
    kill_and_remove("e2e-pod-a");
    assert_nothing_left("e2e-pod-b");
}

#[test]
fn a_killed_shim_is_cleaned_up_by_delete() {
    let img = image("sleep");
    assert_eq!(run_detached(&["--platform", "wasi/wasm", &img], "e2e-dead-shim", &[], &[]).code, 0);
    let pid = wait_status("e2e-dead-shim", "RUNNING", 10);
    let daemons = daemon_pids("e2e-dead-shim");
    assert_eq!(daemons.len(), 1);
    let address = std::fs::read_to_string("/run/wshim/containerd/io.containerd.runtime.v2.task/default/e2e-dead-shim/address").expect("the shim's address file");
    let socket = address.trim().trim_start_matches("unix://").to_string();
    assert!(std::path::Path::new(&socket).exists(), "{socket}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemons[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    // containerd sees the shim's connection drop and runs `containerd-shim-wasmedge-v1 delete`.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(std::time::Instant::now() < deadline, "container process {pid} outlived its shim");
        std::thread::sleep(Duration::from_millis(50));
    }
    remove("e2e-dead-shim");
    assert_nothing_left("e2e-dead-shim");
    assert!(!std::path::Path::new(&socket).exists(), "the dead shim's socket {socket} is left");
}

#[test]
fn task_events_are_published() {
    let (r, out) = with_events(|| run_wasm("hello", "e2e-events", &[], &[]));
    assert_eq!(r.code, 0, "{r:?}");
    for topic in ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"] {
        assert!(out.lines().any(|l| l.contains(topic) && l.contains("e2e-events")), "no {topic} event for e2e-events in:\n{out}");
    }
}

#[test]
fn metrics_come_from_the_container_cgroup() {
    let img = image("sleep");
    let r = run_detached(&["--platform", "wasi/wasm", &img], "e2e-metrics", &["--memory-limit", "268435456"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    wait_status("e2e-metrics", "RUNNING", 10);
    let m = ctr(&["tasks", "metrics", "e2e-metrics"]);
    kill_and_remove("e2e-metrics");
    assert_eq!(m.code, 0, "{m:?}");
    let value = |key: &str| -> u64 {
        m.stdout.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{key} {v:?}"))).unwrap_or_else(|| panic!("no {key}: {}", m.stdout))
    };
    assert_eq!(value("memory.limit_in_bytes"), 268435456, "{}", m.stdout);
    assert!(value("memory.usage_in_bytes") > 0, "{}", m.stdout);
    assert_eq!(value("pids.current"), 1, "{}", m.stdout);
}

#[test]
fn the_pause_container_starts_and_stays_up() {
    let rootfs = bundles().join("native/rootfs-pause");
    let r = run_detached(&["--rootfs", rootfs.to_str().unwrap()], "e2e-pause-container", &[], &["/pause"]);
    assert_eq!(r.code, 0, "{r:?}");
    wait_status("e2e-pause-container", "RUNNING", 10);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(task_status("e2e-pause-container").unwrap().1, "RUNNING", "pause stays up");
    ctr(&["tasks", "kill", "-s", "SIGTERM", "e2e-pause-container"]);
    wait_status("e2e-pause-container", "STOPPED", 10);
    remove("e2e-pause-container");
    assert_nothing_left("e2e-pause-container");
}

/// The container process is cloned straight into its cgroup v2 directory (clone3 with
/// CLONE_INTO_CGROUP: this host's `unified` mount), and joins the v1 hierarchies itself:
/// /proc/PID/cgroup shows it in the container's cgroup in every hierarchy.
#[test]
fn the_process_is_cloned_into_its_cgroup() {
    let id = "e2e-into-cgroup";
    let r = run_detached(&["--platform", "wasi/wasm", &image("sleep")], id, &[], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let pid = wait_status(id, "RUNNING", 10);
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    kill_and_remove(id);
    let log = std::fs::read_to_string("/run/wshim/containerd.log").expect("containerd log");
    let created = log.lines().find(|l| l.contains(&format!(r#"id="{id}""#)) && l.contains("container created")).expect("a 'container created' log line");
    assert!(created.contains(r#"into_cgroup="true""#), "not cloned into its cgroup: {created}");
    let want = format!("/default/{id}");
    for line in cgroups.lines() {
        // hierarchy-id:controllers:path; v1 systemd's named hierarchy is not ours to set.
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        if controllers.starts_with("name=") {
            continue;
        }
        assert_eq!(path, want, "hierarchy {controllers:?} in\n{cgroups}");
    }
    assert!(cgroups.lines().any(|l| l.starts_with("0::")), "no cgroup v2 line in\n{cgroups}");
}

/// A pod's fork server keeps a module it cloned two containers in a row for loaded, so the
/// next container of that module skips loading it; containers of another module, or of the
/// same module with another `#func`, must still get their own.
#[test]
fn a_pods_fork_server_preloads_only_for_the_same_module_and_function() {
    let sandbox = "e2e-preload-sandbox";
    let pod = ["--annotation", "io.kubernetes.cri.sandbox-id=e2e-preload-sandbox"];
    assert_eq!(run_detached(&["--platform", "wasi/wasm", &image("sleep")], sandbox, &pod, &[]).code, 0);
    wait_status(sandbox, "RUNNING", 10);
    let hello = "Hello from WebAssembly on wasmedge-shim!\n";
    let runs: [(&str, &str, &[&str], &str); 8] = [
        ("func", "e2e-preload-1", &["/func.wasm#foo"], "foo called\n"),
        ("func", "e2e-preload-2", &["/func.wasm#foo"], "foo called\n"),
        // Preloaded now: #foo again gets it, the same module with another function does not.
        ("func", "e2e-preload-3", &["/func.wasm#foo"], "foo called\n"),
        ("func", "e2e-preload-4", &[], "start\n"),
        ("hello", "e2e-preload-5", &[], hello),
        ("hello", "e2e-preload-6", &[], hello),
        // hello preloaded: another module does not get it.
        ("func", "e2e-preload-7", &["/func.wasm#foo"], "foo called\n"),
        ("hello", "e2e-preload-8", &[], hello),
    ];
    for (img, id, args, out) in runs {
        let r = run_wasm(img, id, &pod, args);
        assert_eq!((r.code, r.stdout.as_str()), (0, out), "{id}: {r:?}");
    }
    // Loading modules in the fork server must leave it single-threaded (it forks).
    assert_single_threaded(fork_server_of(sandbox), "fork server");
    kill_and_remove(sandbox);
}

/// The container fork server of the shim serving `id`.
fn fork_server_of(id: &str) -> i32 {
    let daemon = daemon_pids(id)[0];
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            status.lines().any(|l| l == format!("PPid:\t{daemon}")) && String::from_utf8_lossy(&cmd).split('\0').next().is_some_and(|a0| a0.ends_with("-fork-server"))
        })
        .expect("the shim's fork server")
}

/// KiB of written (anonymous) pages in `pid`'s mappings of files whose name contains `lib`.
fn written_kib_of(pid: i32, lib: &str) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut inside = false;
    let mut kib = 0;
    for l in smaps.lines() {
        if l.split_whitespace().next().is_some_and(|f| f.contains('-') && f.chars().all(|c| c.is_ascii_hexdigit() || c == '-')) {
            inside = l.contains(lib);
        } else if inside && l.starts_with("Anonymous:") {
            kib += l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap();
        }
    }
    kib
}

/// The fork server has WasmEdge's compiler (libLLVM) loaded, with megabytes of relocated data;
/// a container process cloned from it must not get that data (clone would copy, and exit tear
/// down, its page tables), and must still run: its wasm, traps and SIGTERM work as the other
/// tests show.
#[test]
fn a_wasm_container_does_not_inherit_the_compilers_data() {
    let id = "e2e-no-llvm-data";
    assert_eq!(run_detached(&["--platform", "wasi/wasm", &image("sleep")], id, &[], &[]).code, 0);
    let pid = wait_status(id, "RUNNING", 10) as i32;
    let in_server = written_kib_of(fork_server_of(id), "/libLLVM.so");
    let in_container = written_kib_of(pid, "/libLLVM.so");
    kill_and_remove(id);
    assert!(in_server >= 1024, "the fork server has {in_server} KiB of libLLVM data: is libLLVM still what WasmEdge links?");
    // The pages the dynamic linker reads (dynamic section, TLS image) stay: a few KiB.
    assert!(in_container <= 16, "the container process has {in_container} KiB of libLLVM's data");
}

/// The node fork server keeps the AOT cache's most recently used module loaded (at `_start`)
/// for the next new pod's fork server. A new pod's first container gets it only if it runs
/// that very artifact at that function; any other gets its own module.
#[test]
fn new_pods_get_the_node_servers_module_only_for_the_same_module_and_function() {
    let hello = "Hello from WebAssembly on wasmedge-shim!\n";
    let runs: [(&str, &str, &[&str], &str); 7] = [
        ("hello", "e2e-newpod-1", &[], hello),
        ("hello", "e2e-newpod-2", &[], hello),
        // hello is the most recent module now.
        ("hello", "e2e-newpod-3", &[], hello),
        ("func", "e2e-newpod-4", &["/func.wasm#foo"], "foo called\n"),
        // func.wasm now, at _start: the same module at another function does not get it.
        ("func", "e2e-newpod-5", &[], "start\n"),
        ("func", "e2e-newpod-6", &["/func.wasm#foo"], "foo called\n"),
        ("hello", "e2e-newpod-7", &[], hello),
    ];
    for (img, id, args, out) in runs {
        // No sandbox annotation: each is the first container of a pod of its own.
        let r = run_wasm(img, id, &[], args);
        assert_eq!((r.code, r.stdout.as_str()), (0, out), "{id}: {r:?}");
    }
    // Loading modules in the node fork server must leave it single-threaded (it forks).
    let id = "e2e-newpod-sleeper";
    assert_eq!(run_detached(&["--platform", "wasi/wasm", &image("sleep")], id, &[], &[]).code, 0);
    wait_status(id, "RUNNING", 10);
    let server = ppid(daemon_pids(id)[0]);
    let cmd = cmdline(server);
    assert!(cmd.contains(" node-server "), "the daemon's parent is the node fork server: {cmd}");
    assert_single_threaded(server, "node fork server");
    kill_and_remove(id);
}
