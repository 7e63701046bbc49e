//! The rest of the Task API through containerd: Exec (native and wasm), terminals and
//! ResizePty, stdin and CloseIO, OOM events, Checkpoint refused.
//!
//! The exec tests run the static pause program as the container in `rootfs-tools`, which
//! also holds the probe, a native hello and wasm modules, and exec those into it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use wshim_e2e::*;

fn tools() -> String {
    bundles().join("native/rootfs-tools").to_str().unwrap().to_string()
}

/// A running pause container in rootfs-tools.
fn pause_container(id: &str, extra: &[&str]) {
    let r = run_detached(&["--rootfs", &tools()], id, extra, &["/pause"]);
    assert_eq!(r.code, 0, "{r:?}");
    wait_status(id, "RUNNING", 10);
}

/// A `key=value` line of the probe's report.
fn field<'a>(report: &'a str, key: &str) -> &'a str {
    report.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("no {key} in:\n{report}"))
}

/// `ctr ARGS` with its stdin, stdout and stderr piped to us.
fn spawn_ctr(args: &[&str]) -> std::process::Child {
    Command::new("ctr")
        .args(["--address", SOCK])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("ctr {args:?}: {e}"))
}

#[test]
fn exec_of_a_native_program_joins_the_container() {
    let id = "e2e-exec-native";
    pause_container(id, &["--memory-limit", "268435456"]);
    let own = run_rootfs(RUNTIME, &bundles().join("native/rootfs-tools"), "e2e-exec-native-ref", &[], &["/probe"]);
    let e = ctr(&["tasks", "exec", "--exec-id", "probe1", id, "/probe"]);
    let pids = ctr(&["tasks", "ps", id]);
    kill_and_remove(id);
    assert_eq!(e.code, 0, "{e:?}");
    assert_eq!(own.code, 0, "{own:?}");
    // In the container's pid namespace, beside its pause process (pid 1).
    let pid: i32 = field(&e.stdout, "pid").parse().unwrap();
    assert!(pid > 1 && pid < 100, "exec'd process has pid {pid} in its namespace: not the container's:\n{}", e.stdout);
    // The same identity and sandbox as a container's own process from the same spec.
    for key in ["uid", "gid", "hostname", "CapBnd", "CapEff", "NoNewPrivs", "Seccomp", "nofile", "umask", "fds", "tty"] {
        assert_eq!(field(&e.stdout, key), field(&own.stdout, key), "{key} differs between exec and container process");
    }
    assert_eq!(pids.code, 0, "{pids:?}");
}

#[test]
fn exec_of_a_wasm_module_runs_through_wasmedge_in_the_container() {
    let id = "e2e-exec-wasm";
    pause_container(id, &[]);
    let (e, seen) = with_events(|| ctr(&["tasks", "exec", "--exec-id", "echo1", id, "/echo.wasm", "one", "two"]));
    // Exit codes of exec processes reach ctr too.
    let fail = ctr(&["tasks", "exec", "--exec-id", "cat1", id, "/cat.wasm", "/not-there"]);
    let missing = ctr(&["tasks", "exec", "--exec-id", "missing1", id, "/not-there.wasm"]);
    kill_and_remove(id);
    assert_eq!(e.code, 0, "{e:?}");
    assert!(e.stdout.starts_with("argv[0]=/echo.wasm\nargv[1]=one\nargv[2]=two\n"), "{e:?}");
    assert_eq!(fail.code, 1, "{fail:?}");
    assert!(fail.stdout.is_empty() && fail.stderr.contains("/not-there"), "{fail:?}");
    assert_ne!(missing.code, 0, "{missing:?}");
    assert!(missing.stderr.contains("process.args[0] \"/not-there.wasm\""), "{missing:?}");
    // The exec's own events: added, started, and its exit under its exec id.
    for topic in ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"] {
        assert!(seen.lines().any(|l| l.contains(topic) && l.contains("\"echo1\"")), "no {topic} event for exec echo1:\n{seen}");
    }
}

#[test]
fn exec_gets_stdin_and_its_end() {
    let id = "e2e-exec-stdin";
    pause_container(id, &[]);
    let mut child = spawn_ctr(&["tasks", "exec", "--exec-id", "cat1", id, "/cat.wasm"]);
    child.stdin.take().unwrap().write_all(b"through stdin\n").unwrap();
    // stdin closed: cat sees end-of-file and exits.
    let r = wait_child(child, 10);
    kill_and_remove(id);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "through stdin\n");
}

#[test]
fn close_io_ends_stdin_while_the_client_holds_it_open() {
    let id = "e2e-closeio";
    let mut child = spawn_ctr(&["run", "--rm", "--runtime", RUNTIME, "--rootfs", &tools(), id, "/cat.wasm"]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"before CloseIO\n").unwrap();
    wait_status(id, "RUNNING", 10);
    std::thread::sleep(Duration::from_millis(300));
    // Our end stays open: only CloseIO can give cat its end-of-file.
    let closed = close_stdin(id, "");
    let r = wait_child(child, 10);
    drop(stdin);
    assert_nothing_left(id);
    assert_eq!(closed, Ok(()));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "before CloseIO\n");
}

#[test]
fn run_with_stdin_reads_it_to_the_end() {
    let mut child = spawn_ctr(&["run", "--rm", "--runtime", RUNTIME, "--rootfs", &tools(), "e2e-run-stdin", "/cat.wasm"]);
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..100 {
        writeln!(stdin, "line {i}").unwrap();
    }
    drop(stdin);
    let r = wait_child(child, 10);
    assert_nothing_left("e2e-run-stdin");
    assert_eq!(r.code, 0, "{r:?}");
    let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
    assert_eq!(r.stdout, want);
}

/// Runs `ctr ARGS` on a pseudo-terminal (through script(1)), as a user at a shell would.
fn on_a_terminal(args: &str) -> Run {
    let cmd = format!("stty cols 77 rows 11; ctr --address {SOCK} {args}");
    let mut r: Run = Command::new("script").args(["-qec", &cmd, "/dev/null"]).stdin(Stdio::null()).output().expect("script").into();
    // script(1) passes the end of its (empty) input on as a control character, which the
    // container's terminal echoes as "^@": input, not the program's output.
    r.stdout = r.stdout.replacen("^@", "", 1);
    r
}

#[test]
fn run_with_a_terminal() {
    let r = on_a_terminal(&format!("run --rm -t --runtime {RUNTIME} --rootfs {} e2e-tty /echo.wasm on-a-tty", tools()));
    assert_nothing_left("e2e-tty");
    assert_eq!(r.code, 0, "{r:?}");
    // A terminal's line discipline turns the program's \n into \r\n, and script(1)'s
    // terminal the \n of that into \r\n again: the output went through the container's pty.
    assert!(r.stdout.contains("argv[1]=on-a-tty\r\r\n"), "{r:?}");
    assert!(r.stdout.contains("env=TERM="), "{r:?}");
    assert!(!r.stdout.contains("resize") && !r.stderr.contains("resize"), "ResizePty failed: {r:?}");
}

#[test]
fn exec_with_a_terminal_is_its_controlling_tty_and_takes_the_size() {
    let id = "e2e-exec-tty";
    pause_container(id, &[]);
    let r = on_a_terminal(&format!("tasks exec -t --exec-id tty1 {id} /probe basic winsize"));
    kill_and_remove(id);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("\r\r\n"), "no terminal line endings: {r:?}");
    assert!(!r.stdout.contains("resize") && !r.stderr.contains("resize"), "ResizePty failed: {r:?}");
    let pid: i32 = field(&r.stdout, "pid").parse().unwrap();
    assert!(pid > 1, "{r:?}");
    // The pty has the size of the user's terminal (ResizePty), and is the process's
    // controlling terminal.
    assert!(field(&r.stdout, "tty").ends_with(" ctty=yes"), "{r:?}");
    assert_eq!(field(&r.stdout, "winsize"), "77x11", "{r:?}");
}

#[test]
fn hitting_the_memory_limit_publishes_an_oom_event_and_exits_137() {
    let id = "e2e-oom";
    let (r, out) = with_events(|| run_wasm("memhog", id, &["--memory-limit", "33554432"], &[]));
    assert_eq!(r.code, 137, "{r:?}");
    let line = |topic: &str| out.lines().position(|l| l.contains(topic) && l.contains(&format!("\"{id}\"")));
    let oom = line("/tasks/oom").unwrap_or_else(|| panic!("no /tasks/oom event for {id} in:\n{out}"));
    let exit = line("/tasks/exit").unwrap_or_else(|| panic!("no /tasks/exit event for {id} in:\n{out}"));
    assert!(oom < exit, "the OOM event comes before the exit it caused:\n{out}");
}

#[test]
fn a_container_below_its_limit_gets_no_oom_event() {
    let id = "e2e-no-oom";
    let (r, out) = with_events(|| run_wasm("hello", id, &["--memory-limit", "268435456"], &[]));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(out.lines().any(|l| l.contains("/tasks/exit") && l.contains(id)), "{out}");
    assert!(!out.lines().any(|l| l.contains("/tasks/oom") && l.contains(id)), "{out}");
}

#[test]
fn checkpoint_answers_unimplemented() {
    let id = "e2e-checkpoint";
    pause_container(id, &[]);
    let e = ctr(&["tasks", "checkpoint", id]);
    kill_and_remove(id);
    assert_ne!(e.code, 0, "{e:?}");
    assert!(e.stderr.contains("Checkpoint: not supported by the wasmedge shim") && e.stderr.contains("not implemented"), "{e:?}");
}

#[test]
fn update_changes_the_limits_of_a_running_container() {
    let id = "e2e-update";
    pause_container(id, &["--memory-limit", "268435456"]);
    let memory = || std::fs::read_to_string(format!("/sys/fs/cgroup/memory/default/{id}/memory.limit_in_bytes")).unwrap().trim().to_string();
    let before = memory();
    let ok = update_task(id, r#"{"memory": {"limit": 134217728}, "cpu": {"quota": 50000, "period": 100000}, "pids": {"limit": 42}}"#);
    let after = memory();
    let quota = std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/default/{id}/cpu.cfs_quota_us")).unwrap();
    let pids = std::fs::read_to_string(format!("/sys/fs/cgroup/pids/default/{id}/pids.max")).unwrap();
    // Bad values and fields we cannot apply are refused, naming the field; nothing changes.
    let zero = update_task(id, r#"{"memory": {"limit": 0}}"#);
    let rdma = update_task(id, r#"{"rdma": {"mlx5_1": {"hcaHandles": 3}}}"#);
    let garbage = update_task(id, r#"{"memory": "lots"}"#);
    let unchanged = memory();
    let still = task_status(id);
    kill_and_remove(id);
    assert_eq!(before, "268435456");
    assert_eq!(ok, Ok(()));
    assert_eq!(after, "134217728");
    assert_eq!(quota.trim(), "50000");
    assert_eq!(pids.trim(), "42");
    assert!(zero.as_ref().is_err_and(|e| e.contains("linux.resources.memory.limit")), "{zero:?}");
    assert!(rdma.as_ref().is_err_and(|e| e.contains("linux.resources.rdma")), "{rdma:?}");
    assert!(garbage.as_ref().is_err_and(|e| e.contains("linux.resources")), "{garbage:?}");
    assert_eq!(unchanged, "134217728");
    assert_eq!(still.map(|s| s.1), Some("RUNNING".to_string()));
}
