//! Helpers for the end-to-end tests: `ctr` against the private containerd, test images, and
//! checks that a container left nothing behind. Every test here needs the environment that
//! `make test` sets up; outside it they fail, loudly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const SOCK: &str = "/run/wshim/containerd.sock";
pub const RUNTIME: &str = "io.containerd.wasmedge.v1";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

pub fn bundles() -> PathBuf {
    repo().join("target/test-bundles")
}

/// What `ctr` printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `ctr --address SOCK ARGS…`.
pub fn ctr(args: &[&str]) -> Run {
    require_env();
    Command::new("ctr").arg("--address").arg(SOCK).args(args).output().expect("run ctr").into()
}

/// Fails the test unless the private containerd answers.
pub fn require_env() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        assert!(
            std::env::var_os("WSHIM_IN_ENV").is_some(),
            "END-TO-END TESTS NEED THE DEBIAN 13 ENVIRONMENT AND THE PRIVATE CONTAINERD: run them with `make test`"
        );
        let out = Command::new("ctr").args(["--address", SOCK, "version"]).output().expect("ctr is missing from the environment");
        assert!(out.status.success(), "THE PRIVATE CONTAINERD IS NOT RUNNING at {SOCK}: run the tests with `make test` ({})", String::from_utf8_lossy(&out.stderr));
    });
}

/// Imports `target/test-bundles/NAME.tar` once per test process; returns the image ref.
pub fn image(name: &str) -> String {
    static IMPORTED: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    let r = format!("docker.io/wshim-test/{name}:latest");
    let done = IMPORTED.get_or_init(Default::default);
    let mut done = done.lock().unwrap();
    if !done.contains(&name.to_string()) {
        let tar = bundles().join(format!("{name}.tar"));
        assert!(tar.exists(), "{} is missing: `make bundles` builds it", tar.display());
        let out = ctr(&["image", "import", "--all-platforms", tar.to_str().unwrap()]);
        assert_eq!(out.code, 0, "import {name}: {out:?}");
        done.push(name.to_string());
    }
    r
}

/// Removes a container record named `id` that an interrupted earlier run may have left in
/// the cached containerd state, so the test starts clean.
pub fn forget(id: &str) {
    if ctr(&["containers", "ls", "-q"]).stdout.lines().any(|l| l == id) {
        ctr(&["tasks", "rm", "-f", id]);
        ctr(&["containers", "rm", id]);
    }
}

/// `ctr run --rm` of a wasm image through our runtime, then checks nothing was left behind.
pub fn run_wasm(image_name: &str, id: &str, extra: &[&str], args: &[&str]) -> Run {
    let img = image(image_name);
    forget(id);
    let mut a = vec!["run", "--rm", "--runtime", RUNTIME, "--platform", "wasi/wasm"];
    a.extend_from_slice(extra);
    a.push(&img);
    a.push(id);
    a.extend_from_slice(args);
    let out = ctr(&a);
    assert_nothing_left(id);
    out
}

/// `ctr run --rm --rootfs DIR` through our runtime (or another with `runtime`).
pub fn run_rootfs(runtime: &str, rootfs: &Path, id: &str, extra: &[&str], args: &[&str]) -> Run {
    forget(id);
    let mut a = vec!["run", "--rm", "--runtime", runtime];
    a.extend_from_slice(extra);
    a.extend(["--rootfs", rootfs.to_str().unwrap(), id]);
    a.extend_from_slice(args);
    let out = ctr(&a);
    assert_nothing_left(id);
    out
}

fn containerd_pid() -> String {
    std::fs::read_to_string("/run/wshim/containerd.pid").expect("containerd pid file").trim().to_string()
}

/// No shim process, container, task, mount or cgroup of container `id` remains. Shims exit
/// a moment after the last Delete, so this waits up to a few seconds for them.
pub fn assert_nothing_left(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shims = shims_of(id);
        if shims.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "shim processes of {id} left behind: {shims:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let containers = ctr(&["containers", "ls", "-q"]).stdout;
    assert!(!containers.lines().any(|l| l == id), "container {id} left behind");
    let tasks = ctr(&["tasks", "ls", "-q"]).stdout;
    assert!(!tasks.lines().any(|l| l == id), "task {id} left behind");
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", containerd_pid())).expect("containerd's mountinfo");
    let needle = format!("/{id}/");
    let leaked: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&needle)).collect();
    assert!(leaked.is_empty(), "mounts of {id} left behind: {leaked:?}");
    for h in std::fs::read_dir("/sys/fs/cgroup").expect("cgroupfs") {
        let dir = h.unwrap().path().join("default").join(id);
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
}

/// Shim processes (front or daemon) started for container `id`.
pub fn shims_of(id: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        // Only this checkout's shims: another checkout's containerd may run the same test ids.
        let is_shim = args.first().is_some_and(|a| a.contains("containerd-shim-wasmedge-v1") && a.starts_with(&*repo().to_string_lossy()));
        if is_shim && args.windows(2).any(|w| w[0] == "-id" && w[1] == id) {
            found.push(format!("{}: {}", e.file_name().to_string_lossy(), args.join(" ")));
        }
    }
    found
}

/// Starts `ctr run --rm` of a wasm image in the background; the child's exit code is the
/// container's.
pub fn spawn_wasm(image_name: &str, id: &str, extra: &[&str], args: &[&str]) -> std::process::Child {
    let img = image(image_name);
    forget(id);
    let mut a = vec!["--address", SOCK, "run", "--rm", "--runtime", RUNTIME, "--platform", "wasi/wasm"];
    a.extend_from_slice(extra);
    a.push(&img);
    a.push(id);
    a.extend_from_slice(args);
    Command::new("ctr").args(&a).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn ctr run")
}

/// `ctr run -d`: a detached container, left running.
pub fn run_detached(image_or_rootfs: &[&str], id: &str, extra: &[&str], args: &[&str]) -> Run {
    forget(id);
    let mut a = vec!["run", "-d", "--runtime", RUNTIME];
    a.extend_from_slice(extra);
    a.extend_from_slice(image_or_rootfs);
    a.push(id);
    a.extend_from_slice(args);
    ctr(&a)
}

/// The task's (pid, status) as `ctr task ls` shows them.
pub fn task_status(id: &str) -> Option<(u32, String)> {
    let out = ctr(&["tasks", "ls"]).stdout;
    out.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&id)).then(|| (f[1].parse().unwrap_or(0), f[2].to_string()))
    })
}

/// Waits until the task shows `status`, for up to `secs`.
pub fn wait_status(id: &str, status: &str, secs: u64) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some((pid, s)) = task_status(id) {
            if s == status {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "task {id} never became {status}: {:?}", task_status(id));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for a background `ctr run` to end; returns its exit code.
pub fn wait_child(mut child: std::process::Child, secs: u64) -> Run {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if child.try_wait().expect("wait ctr").is_some() {
            return child.wait_with_output().expect("ctr output").into();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ctr run did not end within {secs}s: {:?}", Run::from(child.wait_with_output().unwrap()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes a stopped (or any) task and its container record.
pub fn remove(id: &str) {
    ctr(&["tasks", "rm", "-f", id]);
    ctr(&["containers", "rm", id]);
}

/// Kills a detached task, waits for it to stop, removes it and checks nothing is left.
pub fn kill_and_remove(id: &str) {
    ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
    wait_status(id, "STOPPED", 10);
    remove(id);
    assert_nothing_left(id);
}

/// `ctr run --rm` of a wasm image in the background, a signal once it runs; returns how
/// `ctr run` ended, after checking nothing was left.
pub fn signal_running(image_name: &str, id: &str, signal: &str) -> Run {
    let child = spawn_wasm(image_name, id, &[], &[]);
    wait_status(id, "RUNNING", 10);
    let k = ctr(&["tasks", "kill", "-s", signal, id]);
    assert_eq!(k.code, 0, "{k:?}");
    let r = wait_child(child, 10);
    assert_nothing_left(id);
    r
}

/// Pids of shim daemons whose command line carries `-id ID`.
pub fn daemon_pids(id: &str) -> Vec<i32> {
    shims_of(id).iter().filter(|s| s.split_whitespace().nth(1).is_some_and(|a0| a0.ends_with("-daemon"))).map(|s| s.split(':').next().unwrap().parse().unwrap()).collect()
}

/// A call to containerd's gRPC API, in the "default" namespace; containerd's error message
/// on failure.
fn grpc<T, F>(call: impl FnOnce(containerd_client::tonic::transport::Channel) -> F) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, containerd_client::tonic::Status>>,
{
    require_env();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async {
        let channel = containerd_client::connect(SOCK).await.map_err(|e| format!("connect {SOCK}: {e}"))?;
        call(channel).await.map_err(|s| s.message().to_string())
    })
}

fn in_default<T>(req: T) -> containerd_client::tonic::Request<T> {
    let mut req = containerd_client::tonic::Request::new(req);
    req.metadata_mut().insert("containerd-namespace", "default".parse().expect("ascii"));
    req
}

/// Tasks.CloseIO (stdin) through containerd's gRPC API, as CRI sends it for `stdinOnce`.
pub fn close_stdin(id: &str, exec_id: &str) -> Result<(), String> {
    use containerd_client::services::v1::tasks_client::TasksClient;
    use containerd_client::services::v1::CloseIoRequest;
    let req = CloseIoRequest { container_id: id.to_string(), exec_id: exec_id.to_string(), stdin: true };
    grpc(|ch| async move { TasksClient::new(ch).close_io(in_default(req)).await.map(|_| ()) })
}

/// Tasks.Update through containerd's gRPC API (ctr 1.7 has no command for it, and Debian 13
/// no crictl): `resources` is a runtime-spec LinuxResources in JSON, as containerd's clients
/// send it. Returns containerd's error message on failure.
pub fn update_task(id: &str, resources: &str) -> Result<(), String> {
    use containerd_client::services::v1::tasks_client::TasksClient;
    use containerd_client::services::v1::UpdateTaskRequest;
    let req = UpdateTaskRequest {
        container_id: id.to_string(),
        resources: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: resources.as_bytes().to_vec(),
        }),
        ..Default::default()
    };
    grpc(|ch| async move { TasksClient::new(ch).update(in_default(req)).await.map(|_| ()) })
}

/// Runs `f` while `ctr events` listens; returns what `f` returned and the events seen.
pub fn with_events<T>(f: impl FnOnce() -> T) -> (T, String) {
    let mut events = Command::new("ctr").args(["--address", SOCK, "events"]).stdout(std::process::Stdio::piped()).spawn().expect("ctr events");
    // ctr subscribes after it started: give it a moment before anything happens.
    std::thread::sleep(Duration::from_millis(300));
    let out = f();
    std::thread::sleep(Duration::from_millis(300));
    events.kill().expect("stop ctr events");
    let seen = String::from_utf8_lossy(&events.wait_with_output().expect("ctr events output").stdout).into_owned();
    (out, seen)
}

/// Process `pid`'s command line, its arguments joined by spaces ("" once it is gone).
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).unwrap_or_default()
}

/// The parent of process `pid`, which must exist.
pub fn ppid(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap().trim().parse().unwrap()
}

/// Fails unless process `pid` (named `what` in the message) has exactly one thread.
pub fn assert_single_threaded(pid: i32, what: &str) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l == "Threads:\t1"), "{what} {pid}: {status}");
}
