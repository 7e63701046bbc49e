//! Driving a shim daemon the way containerd does, for benches and the stress tool: bundles
//! in a scratch directory under `target/tmp`, the front binary's `start` (which has the node
//! fork server fork a daemon, or finds the pod's daemon) and the Task API over ttrpc.
//!
//! Must run inside the environment, with the private containerd up (`make containerd-up`):
//! the daemon publishes its events there (namespace [`NAMESPACE`]; containerd does not know
//! these tasks and only forwards the events).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use containerd_shim::api::{
    ConnectRequest, CreateTaskRequest, DeleteRequest, KillRequest, ShutdownRequest, StartRequest, WaitRequest,
};
use containerd_shim::protos::shim::shim_ttrpc::TaskClient;
use containerd_shim::protos::ttrpc;
use nix::fcntl::{open, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;

/// The containerd namespace the shims are started in.
pub const NAMESPACE: &str = "wshim-bench";
/// The private containerd's gRPC and ttrpc addresses, inside the environment.
pub const CONTAINERD_ADDRESS: &str = "/run/wshim/containerd.sock";
pub const CONTAINERD_TTRPC_ADDRESS: &str = "/run/wshim/containerd.sock.ttrpc";
/// The annotation that groups a pod's containers into one shim.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Every call but Wait gets this long; Wait of a hello task too (it exits at once).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error("front `start` of {id} in {bundle}: {message}")]
    Start { id: String, bundle: String, message: String },
    #[error("ttrpc {call} of {id}: {source}")]
    Call { call: &'static str, id: String, source: ttrpc::Error },
    #[error("task {id}: {message}")]
    Task { id: String, message: String },
    #[error("left behind: {0}")]
    Leftover(String),
}

type Result<T> = std::result::Result<T, ShimError>;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ShimError + 'a {
    move |source| ShimError::Io { what, path: path.display().to_string(), source }
}

/// The repository (the benches crate's parent); the same path inside the environment.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ has a parent").to_path_buf()
}

/// Where the built binaries are: `$WSHIM_BIN`, else `target/env/release`.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("WSHIM_BIN").map(PathBuf::from).unwrap_or_else(|| repo().join("target/env/release"))
}

/// The spec `ctr oci spec` prints (containerd 1.7), which the tasks' specs start from.
const DEFAULT_SPEC: &str = r#"{"ociVersion":"1.2.0","process":{"user":{"uid":0,"gid":0},"cwd":"/",
"capabilities":{"bounding":["CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_FSETID","CAP_FOWNER","CAP_MKNOD","CAP_NET_RAW","CAP_SETGID","CAP_SETUID","CAP_SETFCAP","CAP_SETPCAP","CAP_NET_BIND_SERVICE","CAP_SYS_CHROOT","CAP_KILL","CAP_AUDIT_WRITE"],
"effective":["CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_FSETID","CAP_FOWNER","CAP_MKNOD","CAP_NET_RAW","CAP_SETGID","CAP_SETUID","CAP_SETFCAP","CAP_SETPCAP","CAP_NET_BIND_SERVICE","CAP_SYS_CHROOT","CAP_KILL","CAP_AUDIT_WRITE"],
"permitted":["CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_FSETID","CAP_FOWNER","CAP_MKNOD","CAP_NET_RAW","CAP_SETGID","CAP_SETUID","CAP_SETFCAP","CAP_SETPCAP","CAP_NET_BIND_SERVICE","CAP_SYS_CHROOT","CAP_KILL","CAP_AUDIT_WRITE"]},
"rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":1024}],"noNewPrivileges":true},
"root":{"path":"rootfs"},
"mounts":[{"destination":"/proc","type":"proc","source":"proc","options":["nosuid","noexec","nodev"]},
{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},
{"destination":"/dev/pts","type":"devpts","source":"devpts","options":["nosuid","noexec","newinstance","ptmxmode=0666","mode=0620","gid=5"]},
{"destination":"/dev/shm","type":"tmpfs","source":"shm","options":["nosuid","noexec","nodev","mode=1777","size=65536k"]},
{"destination":"/dev/mqueue","type":"mqueue","source":"mqueue","options":["nosuid","noexec","nodev"]},
{"destination":"/sys","type":"sysfs","source":"sysfs","options":["nosuid","noexec","nodev","ro"]},
{"destination":"/run","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]}],
"linux":{"resources":{"devices":[{"allow":false,"access":"rwm"}]},"cgroupsPath":"/default",
"namespaces":[{"type":"pid"},{"type":"ipc"},{"type":"uts"},{"type":"mount"},{"type":"network"}],
"maskedPaths":["/proc/acpi","/proc/asound","/proc/kcore","/proc/keys","/proc/latency_stats","/proc/timer_list","/proc/timer_stats","/proc/sched_debug","/sys/firmware","/sys/devices/virtual/powercap","/proc/scsi"],
"readonlyPaths":["/proc/bus","/proc/fs","/proc/irq","/proc/sys","/proc/sysrq-trigger"]}}"#;

/// A scratch directory holding one root filesystem (hello.wasm, sleep.wasm) shared by every
/// task, and the tasks' bundles. Dropping it removes the directory and the (empty) parent
/// cgroups of the tasks.
pub struct Workspace {
    dir: PathBuf,
    rootfs: PathBuf,
    /// The tasks' cgroupsPath is `/<cgroup_parent>/<id>`.
    cgroup_parent: String,
    /// Replaces the default spec's `linux.namespaces` (for experiments), if set.
    namespaces: Option<Vec<String>>,
    /// A JSON merge patch (RFC 7386) applied to every task's spec (for experiments).
    patch: Option<serde_json::Value>,
}

impl Workspace {
    /// `tag` names the directory (`target/tmp/<tag>-<pid>`) and the tasks' parent cgroup.
    pub fn new(tag: &str) -> Result<Workspace> {
        let dir = repo().join("target/tmp").join(format!("{tag}-{}", std::process::id()));
        let rootfs = dir.join("rootfs");
        // The spec's mount points must exist in the root filesystem.
        for d in ["dev", "proc", "sys", "run"] {
            let p = rootfs.join(d);
            std::fs::create_dir_all(&p).map_err(io("mkdir", &p))?;
        }
        let bundles = repo().join("target/test-bundles");
        for m in ["hello.wasm", "sleep.wasm"] {
            let from = bundles.join(m);
            std::fs::copy(&from, rootfs.join(m)).map_err(io("copy (make bundles first)", &from))?;
        }
        Ok(Workspace { dir, rootfs, cgroup_parent: format!("{tag}-{}", std::process::id()), namespaces: None, patch: None })
    }

    /// Copies `module` from the test bundles into the tasks' root filesystem (hello.wasm and
    /// sleep.wasm are there already).
    pub fn add_module(&self, module: &str) -> Result<()> {
        let from = repo().join("target/test-bundles").join(module);
        std::fs::copy(&from, self.rootfs.join(module)).map(drop).map_err(io("copy (make bundles first)", &from))
    }

    /// The tasks get exactly these namespaces (`pid`, `network`, …) instead of the default
    /// spec's five: to see what each costs.
    pub fn set_namespaces(&mut self, types: &[&str]) {
        self.namespaces = Some(types.iter().map(|t| t.to_string()).collect());
    }

    /// Every task's spec gets `patch` merged in (RFC 7386: objects merge, anything else
    /// replaces, null removes), after the namespaces: to see what spec features cost.
    pub fn set_spec_patch(&mut self, patch: serde_json::Value) {
        self.patch = Some(patch);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the bundle of task `id` running `/<module>` with `args`, in `pod` if given.
    pub fn bundle(&self, id: &str, pod: Option<&str>, module: &str, args: &[&str]) -> Result<PathBuf> {
        self.bundle_joining(id, pod, module, args, None)
    }

    /// Like [`Workspace::bundle`]; with `sandbox_pid`, the task joins that process's network,
    /// IPC and UTS namespaces by path (`/proc/PID/ns/…`), as containerd's CRI plugin has a
    /// pod's containers join its sandbox's; it still gets its own pid and mount namespaces.
    pub fn bundle_joining(&self, id: &str, pod: Option<&str>, module: &str, args: &[&str], sandbox_pid: Option<u32>) -> Result<PathBuf> {
        let mut spec: serde_json::Value = serde_json::from_str(DEFAULT_SPEC).expect("the default spec is JSON");
        let mut argv = vec![format!("/{module}")];
        argv.extend(args.iter().map(|a| a.to_string()));
        spec["process"]["args"] = argv.into();
        spec["root"]["path"] = self.rootfs.display().to_string().into();
        spec["linux"]["cgroupsPath"] = format!("/{}/{id}", self.cgroup_parent).into();
        if let Some(ns) = &self.namespaces {
            spec["linux"]["namespaces"] = ns.iter().map(|t| serde_json::json!({ "type": t })).collect();
        }
        if let Some(pid) = sandbox_pid {
            for ns in spec["linux"]["namespaces"].as_array_mut().expect("namespaces is a list") {
                let file = match ns["type"].as_str() {
                    Some("network") => "net",
                    Some("ipc") => "ipc",
                    Some("uts") => "uts",
                    _ => continue,
                };
                ns["path"] = format!("/proc/{pid}/ns/{file}").into();
            }
        }
        if let Some(p) = &self.patch {
            merge_patch(&mut spec, p);
        }
        if let Some(pod) = pod {
            spec["annotations"] = serde_json::json!({ SANDBOX_ID: pod });
        }
        let b = self.dir.join("bundles").join(id);
        std::fs::create_dir_all(&b).map_err(io("mkdir", &b))?;
        let cfg = b.join("config.json");
        std::fs::write(&cfg, spec.to_string()).map_err(io("write", &cfg))?;
        Ok(b)
    }

    pub fn remove_bundle(&self, bundle: &Path) {
        let _ = std::fs::remove_dir_all(bundle);
    }

    /// Like containerd: runs the front binary's `start` in the bundle directory and connects
    /// to the address it prints. The daemon's working directory is `bundle`.
    pub fn start_shim(&self, id: &str, bundle: &Path) -> Result<Shim> {
        let front = bin_dir().join("containerd-shim-wasmedge-v1");
        let fail = |message: String| ShimError::Start { id: id.into(), bundle: bundle.display().to_string(), message };
        // containerd makes the FIFO `log` in the bundle before `start`; the daemon cannot
        // start without it (it opens it for its log). A plain file here, kept for reading.
        let log = bundle.join("log");
        if !log.exists() {
            std::fs::write(&log, b"").map_err(io("create", &log))?;
        }
        let out = Command::new(&front)
            .args(["-namespace", NAMESPACE, "-id", id, "-address", CONTAINERD_ADDRESS, "-publish-binary", "/usr/bin/containerd", "start"])
            .current_dir(bundle)
            .env("TTRPC_ADDRESS", CONTAINERD_TTRPC_ADDRESS)
            .output()
            .map_err(|e| fail(format!("run {}: {e}", front.display())))?;
        if !out.status.success() {
            return Err(fail(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
        }
        let address = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Shim::connect(&address)
    }

    /// The cgroup directory task `id` gets in `hierarchy` (e.g. `pids`, or `` for v2).
    pub fn cgroup_dir(&self, hierarchy: &str, id: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup").join(hierarchy).join(&self.cgroup_parent).join(id)
    }

    /// Processes whose working directory is in this workspace (shim daemons, fork servers,
    /// containers that did not pivot_root) as `pid cmdline` lines.
    pub fn processes_inside(&self) -> Vec<String> {
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else { return found };
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            if std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(&self.dir)) {
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                found.push(format!("{pid} {}", String::from_utf8_lossy(&cmd).replace('\0', " ").trim()));
            }
        }
        found
    }

    /// CPU time (user+system, own and reaped children's) of the processes inside this
    /// workspace: the shim daemons and their fork servers. The container processes are the
    /// daemon's children (CLONE_PARENT) and reaped by it, so their time is in its children's.
    /// Returns (user, system).
    pub fn shim_cpu_time(&self) -> (Duration, Duration) {
        let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
        let (mut user, mut sys) = (0u64, 0u64);
        for line in self.processes_inside() {
            let pid = line.split(' ').next().unwrap_or_default();
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            // Fields after the command (which may hold spaces) closed by the last ')'.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
            let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
            // utime, stime, cutime, cstime are fields 14-17 of stat, 12-15 after the ')'.
            if let Some(v) = f.get(11..15) {
                user += v[0] + v[2];
                sys += v[1] + v[3];
            }
        }
        let d = |t: u64| Duration::from_secs_f64(t as f64 / tick);
        (d(user), d(sys))
    }

    /// The task cgroups still present under the parent cgroup, in any hierarchy.
    pub fn cgroups_left(&self) -> Vec<PathBuf> {
        let mut left = Vec::new();
        for h in hierarchies() {
            if let Ok(entries) = std::fs::read_dir(h.join(&self.cgroup_parent)) {
                left.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
            }
        }
        left
    }

    /// Checks that nothing of ours is left: no process inside the workspace, no task cgroup.
    pub fn check_clean(&self) -> Result<()> {
        // Daemons exit a moment after answering Shutdown: give them a little while.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = self.processes_inside();
            let cgroups = self.cgroups_left();
            if procs.is_empty() && cgroups.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ShimError::Leftover(format!("processes {procs:?}, cgroups {cgroups:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// RFC 7386 JSON merge patch of `target` by `patch`.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::json!({});
    }
    let t = target.as_object_mut().expect("made an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
        }
    }
}

/// The cgroup hierarchies' mount points: the v1 controllers and the unified one.
fn hierarchies() -> Vec<PathBuf> {
    let mut hs = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        hs.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
    }
    hs
}

impl Drop for Workspace {
    fn drop(&mut self) {
        // Only empty groups can be removed; rmdir refuses the others, which check_clean reports.
        for h in hierarchies() {
            let _ = std::fs::remove_dir(h.join(&self.cgroup_parent));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client connection to one shim daemon.
pub struct Shim {
    address: String,
    /// Never dropped while the process runs (see `Drop for Shim`).
    client: Option<TaskClient>,
}

/// Connections of dropped [`Shim`]s, kept open until the process exits. ttrpc 0.9's sync
/// client closes its socket on drop while its receiver thread may still be about to read
/// from that descriptor number; the next connection, which gets the same number, then has
/// its response read and discarded by the old thread, and its call times out. The stress
/// tool and the benches open and drop a connection per pod back to back, which hit this
/// (a Create or Wait "Receive packet from Receiver timeout" about once in a few hundred pods).
static RETIRED: std::sync::Mutex<Vec<TaskClient>> = std::sync::Mutex::new(Vec::new());

impl Drop for Shim {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            RETIRED.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        }
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(CALL_TIMEOUT)
}

impl Shim {
    /// Connects to the daemon at `address` (`unix:///…`); every client thread needs its own.
    pub fn connect(address: &str) -> Result<Shim> {
        let client = ttrpc::Client::connect(address).map_err(|source| ShimError::Call { call: "connect", id: address.into(), source })?;
        Ok(Shim { address: address.into(), client: Some(TaskClient::new(client)) })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    fn client(&self) -> &TaskClient {
        self.client.as_ref().expect("a Shim's client is only taken when it is dropped")
    }

    /// The daemon's pid (the Task API's Connect).
    pub fn daemon_pid(&self) -> Result<u32> {
        let r = self.client().connect(ctx(), &ConnectRequest::default()).map_err(|source| ShimError::Call { call: "Connect", id: String::new(), source })?;
        Ok(r.shim_pid)
    }

    /// Create; `stdout` empty is /dev/null, else a FIFO or file path. Returns the pid.
    pub fn create(&self, id: &str, bundle: &Path, stdout: &str) -> Result<u32> {
        let req = CreateTaskRequest { id: id.into(), bundle: bundle.display().to_string(), stdout: stdout.into(), ..Default::default() };
        let r = self.client().create(ctx(), &req).map_err(|source| ShimError::Call { call: "Create", id: id.into(), source })?;
        Ok(r.pid)
    }

    pub fn start(&self, id: &str) -> Result<u32> {
        let r = self.client().start(ctx(), &StartRequest { id: id.into(), ..Default::default() }).map_err(|source| ShimError::Call { call: "Start", id: id.into(), source })?;
        Ok(r.pid)
    }

    /// Waits for the task's exit; returns its exit status.
    pub fn wait(&self, id: &str) -> Result<u32> {
        let r = self.client().wait(ctx(), &WaitRequest { id: id.into(), ..Default::default() }).map_err(|source| ShimError::Call { call: "Wait", id: id.into(), source })?;
        Ok(r.exit_status)
    }

    pub fn kill(&self, id: &str, signal: u32) -> Result<()> {
        let req = KillRequest { id: id.into(), signal, all: true, ..Default::default() };
        self.client().kill(ctx(), &req).map_err(|source| ShimError::Call { call: "Kill", id: id.into(), source })?;
        Ok(())
    }

    /// Delete; returns the exit status.
    pub fn delete(&self, id: &str) -> Result<u32> {
        let r = self.client().delete(ctx(), &DeleteRequest { id: id.into(), ..Default::default() }).map_err(|source| ShimError::Call { call: "Delete", id: id.into(), source })?;
        Ok(r.exit_status)
    }

    /// Shutdown: the daemon exits if it serves no task any more.
    pub fn shutdown(&self) -> Result<()> {
        self.client().shutdown(ctx(), &ShutdownRequest::default()).map_err(|source| ShimError::Call { call: "Shutdown", id: String::new(), source })?;
        Ok(())
    }

    /// Create, Start, Wait, Delete of task `id`; fails unless both Wait and Delete report
    /// exit status 0. Returns the time each call took, in that order.
    pub fn run(&self, id: &str, bundle: &Path) -> Result<[Duration; 4]> {
        let t0 = Instant::now();
        self.create(id, bundle, "")?;
        let t1 = Instant::now();
        if let Err(e) = self.start(id) {
            let _ = self.delete(id);
            return Err(e);
        }
        let t2 = Instant::now();
        let waited = self.wait(id);
        let t3 = Instant::now();
        let deleted = self.delete(id)?;
        let t4 = Instant::now();
        let waited = waited?;
        if waited != 0 || deleted != 0 {
            return Err(ShimError::Task { id: id.into(), message: format!("exit status {waited} (Wait), {deleted} (Delete); expected 0") });
        }
        Ok([t1 - t0, t2 - t1, t3 - t2, t4 - t3])
    }
}

/// A FIFO for a task's stdout whose read end is open (without blocking), so that the first
/// byte the task writes can be seen the moment it is written.
pub struct StdoutFifo {
    path: PathBuf,
    reader: OwnedFd,
}

impl StdoutFifo {
    pub fn new(path: PathBuf) -> Result<StdoutFifo> {
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).map_err(|e| ShimError::Io { what: "mkfifo", path: path.display().to_string(), source: e.into() })?;
        // Opened before the shim opens the write end: a non-blocking read end needs no writer.
        let reader = open(&path, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| ShimError::Io { what: "open", path: path.display().to_string(), source: e.into() })?;
        Ok(StdoutFifo { path, reader })
    }

    pub fn path(&self) -> &str {
        self.path.to_str().expect("UTF-8 path")
    }

    /// Blocks until a byte is readable (none is consumed), or `timeout` passed.
    pub fn wait_first_byte(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = PollTimeout::try_from(left.as_millis().min(10_000) as i32).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.reader.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Ok(_) if fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) => return Ok(()),
                // POLLHUP without data: the writer closed before writing anything.
                Ok(_) if fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLHUP)) => {
                    return Err(ShimError::Task { id: self.path.display().to_string(), message: "stdout closed before the first byte".into() });
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(ShimError::Io { what: "poll", path: self.path.display().to_string(), source: e.into() }),
            }
            if left.is_zero() {
                return Err(ShimError::Task { id: self.path.display().to_string(), message: format!("no output within {timeout:?}") });
            }
        }
    }
}

impl Drop for StdoutFifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn merge_patch_merges_objects_replaces_the_rest_and_removes_nulls() {
        let mut t = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": 5});
        super::merge_patch(&mut t, &json!({"a": {"c": [], "n": true}, "d": null, "f": {"g": 1}}));
        assert_eq!(t, json!({"a": {"b": 1, "c": [], "n": true}, "e": 5, "f": {"g": 1}}));
    }
}
