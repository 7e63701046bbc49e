//! The ttrpc Task service and the daemon's `containerd_shim::Shim`.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use containerd_shim::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse,
    ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::protos::topics::{
    TASK_CREATE_EVENT_TOPIC, TASK_DELETE_EVENT_TOPIC, TASK_EXEC_ADDED_EVENT_TOPIC, TASK_EXEC_STARTED_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC,
    TASK_OOM_EVENT_TOPIC, TASK_PAUSED_EVENT_TOPIC, TASK_RESUMED_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use containerd_shim::{api::Empty, ExitSignal, Task as TaskApi, TtrpcContext, TtrpcResult};
use log::{error, info, warn};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Process};
use wshim_oci::Bundle;
use wshim_sandbox::{create_container, create_exec, mount_rootfs, unmount_rootfs, Container, Plan, RootfsMount, Stdio, Zygote};

use crate::error::{to_ttrpc, TaskError};
use crate::events::Events;
use crate::state::{Proc, Status, Task};
use crate::stdio::{open_io, Relays};
use crate::CGROUP_ROOT;

/// How long Shutdown waits for the queued events to reach containerd.
const EVENTS_FLUSH: Duration = Duration::from_secs(5);

type PlanHook = Box<dyn Fn(&mut Plan) + Send + Sync>;
static PLAN_HOOK: OnceLock<PlanHook> = OnceLock::new();

/// Sets a step that completes every plan at Create, before its process is cloned (the
/// daemon's AOT cache names the compiled module there). Set before `run_daemon`.
pub fn set_plan_hook(hook: impl Fn(&mut Plan) + Send + Sync + 'static) {
    let _ = PLAN_HOOK.set(Box::new(hook));
}

struct Inner {
    tasks: Mutex<HashMap<String, Task>>,
    changed: Condvar,
    zygote: Arc<Zygote>,
    /// Events go to containerd in order, from their own thread (events.rs).
    events: Events,
    exit: Arc<ExitSignal>,
    cgroup_root: PathBuf,
    /// OOM notifications of every container's cgroup; the event's data is a token.
    oom_epoll: Epoll,
    oom_tokens: Mutex<HashMap<u64, String>>,
    next_token: AtomicU64,
}

/// The Task service: every container of this shim (one, or a pod's).
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

fn opt_path(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

fn not_found(id: &str, exec_id: &str) -> TaskError {
    if exec_id.is_empty() {
        TaskError::NotFound(id.to_string())
    } else {
        TaskError::NotFound(format!("{id} (exec {exec_id})"))
    }
}

impl TaskService {
    pub fn new(zygote: Arc<Zygote>, namespace: String, exit: Arc<ExitSignal>) -> TaskService {
        let svc = TaskService {
            inner: Arc::new(Inner {
                tasks: Mutex::new(HashMap::new()),
                changed: Condvar::new(),
                zygote,
                events: Events::start(std::env::var("TTRPC_ADDRESS").unwrap_or_default(), namespace).expect("spawn events thread"),
                exit,
                cgroup_root: PathBuf::from(CGROUP_ROOT),
                oom_epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll_create1"),
                oom_tokens: Mutex::new(HashMap::new()),
                next_token: AtomicU64::new(1),
            }),
        };
        let s = svc.clone();
        std::thread::Builder::new().name("oom".into()).spawn(move || s.watch_oom()).expect("spawn oom thread");
        svc
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Task>> {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        self.inner.events.publish(topic, event);
    }

    /// One thread for every container's OOM notifications.
    fn watch_oom(&self) {
        let mut events = [EpollEvent::empty(); 16];
        loop {
            let n = match self.inner.oom_epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    error!(error:% = e; "OOM watch stopped");
                    return;
                }
            };
            for ev in &events[..n] {
                let id = self.inner.oom_tokens.lock().unwrap_or_else(|e| e.into_inner()).get(&ev.data()).cloned();
                if let Some(id) = id {
                    self.check_oom(&id);
                }
            }
        }
    }

    /// Publishes TaskOOM if the container's cgroup had an OOM kill not reported yet.
    fn check_oom(&self, id: &str) {
        let fired = {
            let mut tasks = self.tasks();
            let Some(t) = tasks.get_mut(id) else { return };
            if let Some(w) = &t.oom {
                w.drain();
            }
            let kills = t.init.process.cgroup.oom_kills().unwrap_or(0);
            let fired = kills > t.oom_kills;
            t.oom_kills = kills;
            fired
        };
        if fired {
            warn!(id; "out of memory: the kernel killed a process of the container");
            self.publish(TASK_OOM_EVENT_TOPIC, Box::new(TaskOOM { container_id: id.into(), ..Default::default() }));
        }
    }

    /// A child of the daemon exited with `code` (128+N for signal N): if it is a process of a
    /// task, its exit is recorded, Wait returns and TaskExit is published. Called by the
    /// daemon's reaper thread, right after waitpid.
    pub fn on_exit(&self, pid: i32, code: i32) {
        if pid == self.inner.zygote.pid {
            error!(pid, exit_status = code; "the fork server exited; no new containers can be created");
            return;
        }
        let found = self.tasks().iter().find_map(|(id, t)| {
            let live = |p: &Proc| p.process.pid == pid && !matches!(p.status, Status::Stopped { .. });
            if live(&t.init) {
                Some((id.clone(), String::new()))
            } else {
                t.execs.iter().find(|(_, p)| live(p)).map(|(e, _)| (id.clone(), e.clone()))
            }
        });
        let Some((id, exec_id)) = found else { return };
        if exec_id.is_empty() {
            // An OOM kill is reported before the exit it caused.
            self.check_oom(&id);
        }
        // A terminal's last output is still in the pty: let it reach containerd first.
        let output = self.tasks().get_mut(&id).and_then(|t| t.proc_mut(&exec_id).and_then(|p| p.io.take_output()));
        if let Some(relay) = output {
            relay.wait(Duration::from_secs(2));
        }
        let event = {
            let mut tasks = self.tasks();
            let Some(t) = tasks.get_mut(&id) else { return };
            if exec_id.is_empty() && t.plan.clone_flags & libc::CLONE_NEWPID == 0 {
                // Without a pid namespace of its own, the container's other processes outlive
                // its first one; the kernel would end them with the namespace. Do it here.
                for p in t.init.process.cgroup.pids() {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
            let Some(p) = t.proc_mut(&exec_id) else { return };
            p.status = Status::Stopped { code: code as u32, at: SystemTime::now() };
            if let Some(msg) = p.process.exit_message() {
                error!(id = id.as_str(), exec_id = exec_id.as_str(), pid; "{msg}");
            }
            info!(id = id.as_str(), exec_id = exec_id.as_str(), pid, exit_status = code; "process exited");
            let (code, at) = p.exit().expect("just stopped");
            let pid = p.pid();
            let exec_or_id = if exec_id.is_empty() { id.clone() } else { exec_id.clone() };
            TaskExit { container_id: id.clone(), id: exec_or_id, pid, exit_status: code, exited_at: Some(at).into(), ..Default::default() }
        };
        self.inner.changed.notify_all();
        self.publish(TASK_EXIT_EVENT_TOPIC, Box::new(event));
    }

    /// Creates a container: mounts its rootfs, validates the bundle, and has the fork server
    /// clone a process that sets itself up and waits for Start.
    pub fn create_task(&self, req: &CreateTaskRequest) -> Result<u32, TaskError> {
        let started = std::time::Instant::now();
        let id = req.id.clone();
        if self.tasks().contains_key(&id) {
            return Err(TaskError::AlreadyExists(id));
        }
        let bundle_dir = PathBuf::from(&req.bundle);
        let mounted = if req.rootfs.is_empty() {
            None
        } else {
            let target = bundle_dir.join("rootfs");
            let mounts: Vec<RootfsMount> = req
                .rootfs
                .iter()
                .map(|m| RootfsMount { fstype: m.type_.clone(), source: m.source.clone(), options: m.options.clone() })
                .collect();
            let mount = std::fs::create_dir_all(&target).and_then(|_| mount_rootfs(&mounts, &target));
            if let Err(source) = mount {
                let _ = unmount_rootfs(&target);
                return Err(TaskError::MountRootfs { id, target: target.display().to_string(), source });
            }
            Some(target)
        };
        match self.create_in_rootfs(req, &bundle_dir) {
            Ok((mut container, plan, io, (plan_us, hook_us))) => {
                let pid = container.pid as u32;
                // `setup_us`: the container setup's stages, in µs since it began (SetupTiming).
                let setup_us = container.timing.to_string();
                let into_cgroup = container.into_cgroup;
                // Set up while the process set itself up.
                let (watch, oom_kills) = container.oom.take().unwrap_or_else(|| (container.cgroup.oom_watch(), container.cgroup.oom_kills().unwrap_or(0)));
                let oom = match watch {
                    Ok(w) => w,
                    Err(e) => {
                        warn!(id = id.as_str(), error:% = e; "no OOM notifications for this container");
                        None
                    }
                };
                if let Some(w) = &oom {
                    let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
                    self.inner.oom_tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(token, id.clone());
                    if let Err(e) = self.inner.oom_epoll.add(w.fd(), EpollEvent::new(EpollFlags::EPOLLIN, token)) {
                        warn!(id = id.as_str(), error:% = e; "no OOM notifications for this container");
                    }
                }
                let task = Task {
                    id: id.clone(),
                    bundle: bundle_dir,
                    init: Proc {
                        process: container,
                        status: Status::Created,
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                        io,
                    },
                    execs: HashMap::new(),
                    plan,
                    mounted_rootfs: mounted,
                    oom,
                    oom_kills,
                };
                self.tasks().insert(id.clone(), task);
                let create_us = started.elapsed().as_micros() as u64;
                // Where the time went, in the one line a Create logs (each line is a write to
                // containerd's log FIFO, and a wake-up of containerd to copy it): `plan_us`
                // (bundle read and checked), `hook_us` (the AOT cache), `setup_us`.
                info!(id = id.as_str(), pid, create_us, into_cgroup, plan_us, hook_us, setup_us = setup_us.as_str(); "container created");
                let ev = TaskCreate {
                    container_id: id,
                    bundle: req.bundle.clone(),
                    rootfs: req.rootfs.clone(),
                    io: Some(containerd_shim::protos::events::task::TaskIO {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                        ..Default::default()
                    })
                    .into(),
                    checkpoint: req.checkpoint.clone(),
                    pid,
                    ..Default::default()
                };
                self.publish(TASK_CREATE_EVENT_TOPIC, Box::new(ev));
                Ok(pid)
            }
            Err(e) => {
                if let Some(t) = &mounted {
                    if let Err(u) = unmount_rootfs(t) {
                        error!(id = id.as_str(), error:% = u; "unmount rootfs");
                    }
                }
                error!(id = id.as_str(), error:% = e; "create failed");
                Err(e)
            }
        }
    }

    /// The created container, its plan, its stdio relays, and the µs that reading the bundle
    /// into a plan and the plan hook took.
    fn create_in_rootfs(&self, req: &CreateTaskRequest, bundle_dir: &Path) -> Result<(Container, Plan, Relays, (u64, u64)), TaskError> {
        let id = req.id.clone();
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(TaskError::Unsupported("checkpoint/restore"));
        }
        let started = std::time::Instant::now();
        let bundle = Bundle::load(bundle_dir).map_err(|source| TaskError::Bundle { id: id.clone(), source })?;
        let entry = wshim_oci::detect(&bundle).map_err(|source| TaskError::Entrypoint { id: id.clone(), source })?;
        let stdio = Stdio { stdin: opt_path(&req.stdin), stdout: opt_path(&req.stdout), stderr: opt_path(&req.stderr) };
        let mut plan = Plan::from_bundle(&id, &bundle, entry, stdio).map_err(|source| TaskError::Spec { id: id.clone(), source })?;
        if req.terminal != plan.terminal {
            let why = "containerd's terminal flag and process.terminal disagree";
            return Err(TaskError::BadRequest { id, field: "process.terminal", message: why.into() });
        }
        let plan_us = started.elapsed().as_micros() as u64;
        if let Some(hook) = PLAN_HOOK.get() {
            hook(&mut plan);
        }
        let hook_us = started.elapsed().as_micros() as u64 - plan_us;
        let (child_io, pending) = open_io(&req.stdin, &req.stdout, &req.stderr, req.terminal).map_err(|source| TaskError::Io { id: id.clone(), source })?.split();
        match create_container(plan.clone(), &self.inner.zygote, &self.inner.cgroup_root, child_io) {
            Ok(c) => {
                let relays = pending.start(c.console.as_ref()).map_err(|source| TaskError::Io { id: id.clone(), source });
                match relays {
                    Ok(r) => Ok((c, plan, r, (plan_us, hook_us))),
                    Err(e) => {
                        let _ = kill(Pid::from_raw(c.pid), Signal::SIGKILL);
                        self.remove_cgroup_later(&id, c.cgroup);
                        Err(e)
                    }
                }
            }
            Err((source, cgroup)) => {
                if let Some(cg) = cgroup {
                    self.remove_cgroup_later(&id, cg);
                }
                Err(TaskError::Create { id, source })
            }
        }
    }

    /// Removes the cgroup of a process that was just SIGKILLed: our reaper collects it,
    /// and the cgroup empties a moment later (`remove` retries while it is busy).
    fn remove_cgroup_later(&self, id: &str, cg: wshim_sandbox::Cgroup) {
        if let Err(e) = cg.remove() {
            error!(id, error:% = e; "remove cgroup");
        }
    }

    /// Exec: an extra process in the running container, created and waiting for Start.
    pub fn exec_task(&self, req: &ExecProcessRequest) -> Result<(), TaskError> {
        let (id, exec_id) = (req.id.as_str(), req.exec_id.as_str());
        let bad = |message: String| TaskError::BadRequest { id: id.into(), field: "exec process spec", message };
        let any = req.spec.as_ref().ok_or_else(|| bad("no process spec".into()))?;
        let process: Process = serde_json::from_slice(&any.value).map_err(|e| bad(e.to_string()))?;
        let (plan, init_pid) = {
            let tasks = self.tasks();
            let t = tasks.get(id).ok_or_else(|| not_found(id, ""))?;
            if t.execs.contains_key(exec_id) || exec_id.is_empty() {
                return Err(TaskError::AlreadyExists(format!("{id} (exec {exec_id})")));
            }
            if !matches!(t.init.status, Status::Running) {
                return Err(TaskError::WrongState { id: id.into(), what: "exec", state: t.init.status.name() });
            }
            // What the exec's args[0] names, looked up in the container's root filesystem
            // with the exec's own env and cwd, like the container's first process.
            let mut bundle = Bundle::load(&t.bundle).map_err(|source| TaskError::Bundle { id: id.into(), source })?;
            bundle.spec.set_process(Some(process.clone()));
            let entry = wshim_oci::detect(&bundle).map_err(|source| TaskError::Entrypoint { id: id.into(), source })?;
            let plan = t.plan.for_exec(&process, t.init.process.pid, entry).map_err(|source| TaskError::Spec { id: id.into(), source })?;
            (plan, t.init.process.pid)
        };
        let mut plan = plan;
        if let Some(hook) = PLAN_HOOK.get() {
            hook(&mut plan);
        }
        if req.terminal != plan.terminal {
            return Err(bad("containerd's terminal flag and process.terminal disagree".into()));
        }
        let (child_io, pending) = open_io(&req.stdin, &req.stdout, &req.stderr, req.terminal).map_err(|source| TaskError::Io { id: id.into(), source })?.split();
        let process = {
            let tasks = self.tasks();
            let t = tasks.get(id).ok_or_else(|| not_found(id, ""))?;
            create_exec(plan, &self.inner.zygote, &t.init.process, child_io).map_err(|source| TaskError::Create { id: id.into(), source })?
        };
        let io = match pending.start(process.console.as_ref()) {
            Ok(io) => io,
            Err(source) => {
                let _ = kill(Pid::from_raw(process.pid), Signal::SIGKILL);
                return Err(TaskError::Io { id: id.into(), source });
            }
        };
        let pid = process.pid;
        let proc = Proc { process, status: Status::Created, stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone(), terminal: req.terminal, io };
        match self.tasks().get_mut(id) {
            Some(t) => {
                t.execs.insert(exec_id.to_string(), proc);
            }
            None => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                return Err(not_found(id, ""));
            }
        }
        info!(id, exec_id, pid, init_pid; "exec process created");
        self.publish(TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(TaskExecAdded { container_id: id.into(), exec_id: exec_id.into(), ..Default::default() }));
        Ok(())
    }

    pub fn start_task(&self, id: &str, exec_id: &str) -> Result<u32, TaskError> {
        let mut tasks = self.tasks();
        let t = tasks.get_mut(id).ok_or_else(|| not_found(id, ""))?;
        let p = t.proc_mut(exec_id).ok_or_else(|| not_found(id, exec_id))?;
        if p.status != Status::Created {
            return Err(TaskError::WrongState { id: id.into(), what: "start", state: p.status.name() });
        }
        if let Err(source) = p.process.start() {
            // The process failed its last steps (execve) and is exiting. Answer once its exit
            // is recorded: containerd's client refuses to delete a task it sees CREATED, so
            // `ctr run --rm` would leave the task and container behind.
            let pid = p.process.pid;
            drop(tasks);
            self.wait_exit_after_failed_start(id, exec_id, pid);
            return Err(TaskError::Start { id: id.into(), source });
        }
        // An exit can only be recorded once the status is Running, so set it before the
        // lock is released (the exit thread waits on it).
        p.status = Status::Running;
        let pid = p.pid();
        drop(tasks);
        if exec_id.is_empty() {
            self.publish(TASK_START_EVENT_TOPIC, Box::new(TaskStart { container_id: id.into(), pid, ..Default::default() }));
        } else {
            let ev = TaskExecStarted { container_id: id.into(), exec_id: exec_id.into(), pid, ..Default::default() };
            self.publish(TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev));
        }
        Ok(pid)
    }

    /// Waits (a bounded time, then with SIGKILL) until the exit of `pid`, whose Start failed,
    /// is recorded for task `id`.
    fn wait_exit_after_failed_start(&self, id: &str, exec_id: &str, pid: i32) {
        let mut deadline = Some(std::time::Instant::now() + std::time::Duration::from_secs(2));
        let mut tasks = self.tasks();
        loop {
            if tasks.get(id).and_then(|t| t.proc(exec_id)).is_none_or(|p| p.exit().is_some()) {
                return;
            }
            match deadline {
                Some(d) if std::time::Instant::now() >= d => {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    deadline = None;
                }
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    tasks = self.inner.changed.wait_timeout(tasks, left).unwrap_or_else(|e| e.into_inner()).0;
                }
                None => tasks = self.inner.changed.wait(tasks).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    pub fn kill_task(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<(), TaskError> {
        let tasks = self.tasks();
        let t = tasks.get(id).ok_or_else(|| not_found(id, ""))?;
        let p = t.proc(exec_id).ok_or_else(|| not_found(id, exec_id))?;
        if matches!(p.status, Status::Stopped { .. }) {
            return Err(TaskError::Finished { id: id.into() });
        }
        let sig = Signal::try_from(signal as i32).map_err(|source| TaskError::Kill { id: id.into(), signal, source })?;
        let pids = if all && exec_id.is_empty() { t.init.process.cgroup.pids() } else { vec![p.process.pid] };
        for pid in pids {
            match kill(Pid::from_raw(pid), sig) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(source) => return Err(TaskError::Kill { id: id.into(), signal, source }),
            }
        }
        // A frozen process handles no signal, SIGKILL included, until it is thawed.
        if t.init.status == Status::Paused && sig == Signal::SIGKILL {
            t.init.process.cgroup.freeze(false).map_err(|e| TaskError::Freeze { id: id.into(), source: e })?;
        }
        Ok(())
    }

    /// Freezes (`pause`) or thaws the task's cgroup.
    pub fn pause_task(&self, id: &str, pause: bool) -> Result<(), TaskError> {
        let mut tasks = self.tasks();
        let t = tasks.get_mut(id).ok_or_else(|| not_found(id, ""))?;
        let (from, to, what) = if pause { (Status::Running, Status::Paused, "pause") } else { (Status::Paused, Status::Running, "resume") };
        if t.init.status != from {
            return Err(TaskError::WrongState { id: id.into(), what, state: t.init.status.name() });
        }
        t.init.process.cgroup.freeze(pause).map_err(|e| TaskError::Freeze { id: id.into(), source: e })?;
        t.init.status = to;
        drop(tasks);
        if pause {
            self.publish(TASK_PAUSED_EVENT_TOPIC, Box::new(TaskPaused { container_id: id.into(), ..Default::default() }));
        } else {
            self.publish(TASK_RESUMED_EVENT_TOPIC, Box::new(TaskResumed { container_id: id.into(), ..Default::default() }));
        }
        Ok(())
    }

    /// Update: new resource limits for the running container's cgroup.
    pub fn update_task(&self, id: &str, resources: &[u8]) -> Result<(), TaskError> {
        // containerd sends the runtime spec's LinuxResources as JSON inside the Any.
        let r: LinuxResources = serde_json::from_slice(resources)
            .map_err(|e| TaskError::BadRequest { id: id.into(), field: "linux.resources", message: e.to_string() })?;
        wshim_sandbox::check_resources(&r).map_err(|source| TaskError::Spec { id: id.into(), source })?;
        let tasks = self.tasks();
        let t = tasks.get(id).ok_or_else(|| not_found(id, ""))?;
        if matches!(t.init.status, Status::Stopped { .. }) {
            return Err(TaskError::Finished { id: id.into() });
        }
        t.init.process.cgroup.update(&r).map_err(|source| TaskError::Update { id: id.into(), source })?;
        info!(id; "resources updated");
        Ok(())
    }

    /// Blocks until the process stopped; returns its exit status and time.
    pub fn wait_task(&self, id: &str, exec_id: &str) -> Result<(u32, Timestamp), TaskError> {
        let mut tasks = self.tasks();
        loop {
            let t = tasks.get(id).ok_or_else(|| not_found(id, ""))?;
            let p = t.proc(exec_id).ok_or_else(|| not_found(id, exec_id))?;
            if let Some(exit) = p.exit() {
                return Ok(exit);
            }
            tasks = self.inner.changed.wait(tasks).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn delete_task(&self, id: &str, exec_id: &str) -> Result<(u32, u32, Timestamp), TaskError> {
        {
            let tasks = self.tasks();
            let t = tasks.get(id).ok_or_else(|| not_found(id, ""))?;
            let p = t.proc(exec_id).ok_or_else(|| not_found(id, exec_id))?;
            match p.status {
                Status::Running | Status::Paused => return Err(TaskError::WrongState { id: id.into(), what: "delete", state: p.status.name() }),
                // Never started: it waits for Start; kill it and let the reaper record it.
                Status::Created => {
                    let _ = kill(Pid::from_raw(p.process.pid), Signal::SIGKILL);
                }
                Status::Stopped { .. } => {}
            }
            if exec_id.is_empty() {
                // Exec processes still running keep the container: they are killed first.
                for e in t.execs.values().filter(|e| !matches!(e.status, Status::Stopped { .. })) {
                    let _ = kill(Pid::from_raw(e.process.pid), Signal::SIGKILL);
                }
            }
        }
        let (code, at) = self.wait_task(id, exec_id)?;
        if !exec_id.is_empty() {
            let mut tasks = self.tasks();
            let p = tasks.get_mut(id).and_then(|t| t.execs.remove(exec_id)).ok_or_else(|| not_found(id, exec_id))?;
            info!(id, exec_id; "exec process deleted");
            return Ok((p.pid(), code, at));
        }
        for e in self.tasks().get(id).map(|t| t.execs.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            let _ = self.wait_task(id, &e);
        }
        let t = self.tasks().remove(id).ok_or_else(|| not_found(id, ""))?;
        self.inner.oom_tokens.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, v| v != id);
        if let Some(w) = &t.oom {
            let _ = self.inner.oom_epoll.delete(w.fd().as_fd());
        }
        let mut problems = Vec::new();
        let started = std::time::Instant::now();
        if let Err(e) = t.init.process.cgroup.remove() {
            problems.push(e.to_string());
        }
        let cgroup_us = started.elapsed().as_micros() as u64;
        if let Some(target) = &t.mounted_rootfs {
            if let Err(e) = unmount_rootfs(target) {
                problems.push(e.to_string());
            }
        }
        let cleanup_us = started.elapsed().as_micros() as u64;
        let pid = t.init.pid();
        self.publish(
            TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete { container_id: id.into(), id: id.into(), pid, exit_status: code, exited_at: Some(at.clone()).into(), ..Default::default() }),
        );
        if !problems.is_empty() {
            return Err(TaskError::Cleanup { id: id.into(), what: "cgroup and rootfs", message: problems.join("; ") });
        }
        info!(id, cgroup_us, cleanup_us; "container deleted");
        Ok((pid, code, at))
    }

    fn with_proc<T>(&self, id: &str, exec_id: &str, f: impl FnOnce(&mut Proc) -> Result<T, TaskError>) -> Result<T, TaskError> {
        let mut tasks = self.tasks();
        let t = tasks.get_mut(id).ok_or_else(|| not_found(id, ""))?;
        f(t.proc_mut(exec_id).ok_or_else(|| not_found(id, exec_id))?)
    }
}

fn ttrpc<T>(r: Result<T, TaskError>) -> TtrpcResult<T> {
    r.map_err(|e| to_ttrpc(&e))
}

impl TaskApi for TaskService {
    fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        let pid = ttrpc(self.create_task(&req))?;
        Ok(CreateTaskResponse { pid, ..Default::default() })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let pid = ttrpc(self.start_task(&req.id, &req.exec_id))?;
        Ok(StartResponse { pid, ..Default::default() })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let tasks = self.tasks();
        let t = ttrpc(tasks.get(&req.id).ok_or_else(|| not_found(&req.id, "")))?;
        let p = ttrpc(t.proc(&req.exec_id).ok_or_else(|| not_found(&req.id, &req.exec_id)))?;
        // The container's status covers Paused; an exec shares it while it runs.
        let status = match (&p.status, &t.init.status) {
            (Status::Running, Status::Paused) => Status::Paused,
            (s, _) => *s,
        };
        let mut resp = StateResponse {
            id: t.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: t.bundle.display().to_string(),
            pid: p.pid(),
            status: status.api().into(),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            ..Default::default()
        };
        if let Some((code, at)) = p.exit() {
            resp.exit_status = code;
            resp.exited_at = Some(at).into();
        }
        Ok(resp)
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let (code, at) = ttrpc(self.wait_task(&req.id, &req.exec_id))?;
        Ok(WaitResponse { exit_status: code, exited_at: Some(at).into(), ..Default::default() })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        ttrpc(self.kill_task(&req.id, &req.exec_id, req.signal, req.all))?;
        Ok(Empty::new())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let (pid, code, at) = ttrpc(self.delete_task(&req.id, &req.exec_id))?;
        Ok(DeleteResponse { pid, exit_status: code, exited_at: Some(at).into(), ..Default::default() })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let tasks = self.tasks();
        let t = ttrpc(tasks.get(&req.id).ok_or_else(|| not_found(&req.id, "")))?;
        let processes = t.init.process.cgroup.pids().into_iter().map(|p| ProcessInfo { pid: p as u32, ..Default::default() }).collect();
        Ok(PidsResponse { processes, ..Default::default() })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self.tasks().get(&req.id).map(|t| t.init.pid()).unwrap_or(0);
        Ok(ConnectResponse { shim_pid: std::process::id(), task_pid, version: "2".into(), ..Default::default() })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        ttrpc(self.pause_task(&req.id, true))?;
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        ttrpc(self.pause_task(&req.id, false))?;
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        ttrpc(self.exec_task(&req))?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        ttrpc(self.with_proc(&req.id, &req.exec_id, |p| {
            p.io.resize(req.width, req.height).map_err(|e| TaskError::BadRequest { id: req.id.clone(), field: "ResizePty", message: e.to_string() })
        }))?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        if req.stdin {
            // Closing joins the relay thread, which ends promptly: never under the lock.
            let relays = ttrpc(self.with_proc(&req.id, &req.exec_id, |p| Ok(p.io.take_stdin())))?;
            drop(relays);
            info!(id = req.id.as_str(), exec_id = req.exec_id.as_str(); "stdin closed");
        }
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let value = req.resources.as_ref().map(|a| a.value.as_slice()).unwrap_or(b"{}");
        ttrpc(self.update_task(&req.id, value))?;
        Ok(Empty::new())
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let tasks = self.tasks();
        let t = ttrpc(tasks.get(&req.id).ok_or_else(|| not_found(&req.id, "")))?;
        let stats = ttrpc(crate::metrics::metrics(&t.init.process.cgroup).map_err(|message| TaskError::Stats { id: req.id.clone(), message }))?;
        Ok(StatsResponse { stats: Some(stats).into(), ..Default::default() })
    }

    // Checkpoint/restore would need CRIU and a wasm snapshot format: not supported.
    fn checkpoint(&self, _ctx: &TtrpcContext, _req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        Err(to_ttrpc(&TaskError::Unsupported("Checkpoint")))
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        // The shim serves every container of its pod: it stays while any remains.
        if self.tasks().is_empty() {
            info!("last task gone: shutting down");
            // The last task's events (its exit, its delete) reach containerd before we go.
            if !self.inner.events.flush(EVENTS_FLUSH) {
                warn!(within_s = EVENTS_FLUSH.as_secs(); "events not all published before shutdown");
            }
            self.inner.exit.signal();
        }
        Ok(Empty::new())
    }
}
