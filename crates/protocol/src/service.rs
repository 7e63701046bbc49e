//! The ttrpc Task service and the daemon's `containerd_shim::Shim`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::SystemTime;

use containerd_shim::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, ExecProcessRequest, PauseRequest, ResizePtyRequest,
    ResumeRequest, StatsRequest, StatsResponse, UpdateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse, KillRequest, PidsRequest,
    PidsResponse, ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, WaitRequest, WaitResponse,
};
use containerd_shim::monitor::{monitor_subscribe, Subject, Topic};
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskPaused, TaskResumed, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::protos::topics::{
    TASK_CREATE_EVENT_TOPIC, TASK_DELETE_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC, TASK_PAUSED_EVENT_TOPIC, TASK_RESUMED_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api::Empty, Config, ExitSignal, Flags, Shim, StartOpts, Task as TaskApi, TtrpcContext, TtrpcResult};
use log::{error, info, warn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use wshim_oci::Bundle;
use wshim_sandbox::{create_container, mount_rootfs, unmount_rootfs, Plan, RootfsMount, Stdio, Zygote, ZygoteError};

use crate::error::{to_ttrpc, TaskError};
use crate::state::{Status, Task};
use crate::{CGROUP_ROOT, RUNTIME_ID};

type ZygoteFactory = Box<dyn Fn() -> Result<Zygote, ZygoteError> + Send + Sync>;
static ZYGOTE_FACTORY: OnceLock<ZygoteFactory> = OnceLock::new();

type PlanHook = Box<dyn Fn(&mut Plan) + Send + Sync>;
static PLAN_HOOK: OnceLock<PlanHook> = OnceLock::new();

/// Sets a step that completes every plan at Create, before its process is cloned (the
/// daemon's AOT cache names the compiled module there). Set before [`run_daemon`].
pub fn set_plan_hook(hook: impl Fn(&mut Plan) + Send + Sync + 'static) {
    let _ = PLAN_HOOK.set(Box::new(hook));
}

/// Entry point of the shim daemon: serves the Task API, creating containers through the
/// fork server that `factory` forks. `factory` runs before any thread exists.
pub fn run_daemon(factory: impl Fn() -> Result<Zygote, ZygoteError> + Send + Sync + 'static) {
    let _ = ZYGOTE_FACTORY.set(Box::new(factory));
    containerd_shim::run::<DaemonShim>(RUNTIME_ID, Some(Config { default_log_level: "info".into(), ..Default::default() }));
}

struct DaemonShim {
    zygote: Option<Arc<Zygote>>,
    namespace: String,
    exit: Arc<ExitSignal>,
}

impl Shim for DaemonShim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        // containerd_shim calls this before it starts any thread (its ttrpc server and
        // signal loop come later), which is the one moment a fork is safe.
        let zygote = if args.action.is_empty() {
            let factory = ZYGOTE_FACTORY.get().expect("run_daemon sets the factory");
            match factory() {
                Ok(z) => Some(Arc::new(z)),
                Err(e) => {
                    eprintln!("{RUNTIME_ID}: cannot start the fork server: {e}");
                    std::process::exit(1);
                }
            }
        } else {
            None
        };
        DaemonShim { zygote, namespace: args.namespace.clone(), exit: Arc::new(ExitSignal::default()) }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        crate::front::start_shim(opts)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        crate::front::delete_shim()
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let zygote = self.zygote.clone().expect("the server action forked a fork server");
        TaskService::new(zygote, publisher, self.namespace.clone(), self.exit.clone())
    }
}

struct Inner {
    tasks: Mutex<HashMap<String, Task>>,
    changed: Condvar,
    zygote: Arc<Zygote>,
    publisher: RemotePublisher,
    namespace: String,
    exit: Arc<ExitSignal>,
    cgroup_root: PathBuf,
}

/// The Task service: every container of this shim (one, or a pod's).
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

fn opt_path(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

impl TaskService {
    pub fn new(zygote: Arc<Zygote>, publisher: RemotePublisher, namespace: String, exit: Arc<ExitSignal>) -> TaskService {
        let svc = TaskService {
            inner: Arc::new(Inner {
                tasks: Mutex::new(HashMap::new()),
                changed: Condvar::new(),
                zygote,
                publisher,
                namespace,
                exit,
                cgroup_root: PathBuf::from(CGROUP_ROOT),
            }),
        };
        // Subscribe before any container exists, so that no exit is missed. containerd_shim's
        // reaper reaps every child (the containers are ours through CLONE_PARENT).
        match monitor_subscribe(Topic::Pid) {
            Ok(sub) => {
                let s = svc.clone();
                std::thread::Builder::new()
                    .name("exits".into())
                    .spawn(move || {
                        for ev in sub.rx.iter() {
                            if let Subject::Pid(pid) = ev.subject {
                                s.on_exit(pid, ev.exit_code);
                            }
                        }
                    })
                    .expect("spawn exit thread");
            }
            Err(e) => error!(error:% = e; "cannot watch container exits"),
        }
        svc
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Task>> {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self.inner.publisher.publish(Context::default(), topic, &self.inner.namespace, event) {
            warn!(topic, error:% = e; "publish failed");
        }
    }

    fn on_exit(&self, pid: i32, code: i32) {
        if pid == self.inner.zygote.pid {
            error!(pid, exit_status = code; "the fork server exited; no new containers can be created");
            return;
        }
        let event = {
            let mut tasks = self.tasks();
            let Some(t) = tasks.values_mut().find(|t| t.container.pid == pid && !matches!(t.status, Status::Stopped { .. })) else {
                return;
            };
            t.status = Status::Stopped { code: code as u32, at: SystemTime::now() };
            if let Some(msg) = t.container.exit_message() {
                error!(id = t.id.as_str(), pid; "{msg}");
            }
            info!(id = t.id.as_str(), pid, exit_status = code; "container exited");
            let (code, at) = t.exit().expect("just stopped");
            TaskExit { container_id: t.id.clone(), id: t.id.clone(), pid: pid as u32, exit_status: code, exited_at: Some(at).into(), ..Default::default() }
        };
        self.inner.changed.notify_all();
        self.publish(TASK_EXIT_EVENT_TOPIC, Box::new(event));
    }

    /// Creates a container: mounts its rootfs, validates the bundle, and has the fork server
    /// clone a process that sets itself up and waits for Start.
    pub fn create_task(&self, req: &CreateTaskRequest) -> Result<u32, TaskError> {
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
        let result = self.create_in_rootfs(req, &bundle_dir);
        match result {
            Ok(container) => {
                let pid = container.pid as u32;
                let task = Task {
                    id: id.clone(),
                    bundle: bundle_dir,
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    container,
                    mounted_rootfs: mounted,
                    status: Status::Created,
                };
                self.tasks().insert(id.clone(), task);
                info!(id = id.as_str(), pid; "container created");
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

    fn create_in_rootfs(&self, req: &CreateTaskRequest, bundle_dir: &Path) -> Result<wshim_sandbox::Container, TaskError> {
        let id = req.id.clone();
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(TaskError::Unsupported("checkpoint/restore"));
        }
        let bundle = Bundle::load(bundle_dir).map_err(|source| TaskError::Bundle { id: id.clone(), source })?;
        let entry = wshim_oci::detect(&bundle).map_err(|source| TaskError::Entrypoint { id: id.clone(), source })?;
        let stdio = Stdio { stdin: opt_path(&req.stdin), stdout: opt_path(&req.stdout), stderr: opt_path(&req.stderr) };
        let mut plan = Plan::from_bundle(&id, &bundle, entry, stdio).map_err(|source| TaskError::Spec { id: id.clone(), source })?;
        if req.terminal {
            return Err(TaskError::Spec {
                id,
                source: wshim_sandbox::PlanError::Unsupported { field: "process.terminal".into(), why: "terminals come with the Task API work" },
            });
        }
        if let Some(hook) = PLAN_HOOK.get() {
            hook(&mut plan);
        }
        match create_container(plan, &self.inner.zygote, &self.inner.cgroup_root) {
            Ok(c) => Ok(c),
            Err((source, cgroup)) => {
                if let Some(cg) = cgroup {
                    // The failed process was SIGKILLed; our reaper collects it, and the
                    // cgroup empties a moment later.
                    if let Err(e) = cg.remove() {
                        error!(id = id.as_str(), error:% = e; "remove cgroup");
                    }
                }
                Err(TaskError::Create { id, source })
            }
        }
    }

    pub fn start_task(&self, id: &str) -> Result<u32, TaskError> {
        let mut tasks = self.tasks();
        let t = tasks.get_mut(id).ok_or_else(|| TaskError::NotFound(id.to_string()))?;
        if t.status != Status::Created {
            return Err(TaskError::WrongState { id: id.into(), what: "start", state: t.status.name() });
        }
        t.container.start().map_err(|source| TaskError::Start { id: id.into(), source })?;
        // An exit can only be recorded once the status is Running, so set it before the
        // lock is released (the exit thread waits on it).
        t.status = Status::Running;
        let pid = t.pid();
        drop(tasks);
        self.publish(TASK_START_EVENT_TOPIC, Box::new(TaskStart { container_id: id.into(), pid, ..Default::default() }));
        Ok(pid)
    }

    pub fn kill_task(&self, id: &str, signal: u32, all: bool) -> Result<(), TaskError> {
        let tasks = self.tasks();
        let t = tasks.get(id).ok_or_else(|| TaskError::NotFound(id.to_string()))?;
        if matches!(t.status, Status::Stopped { .. }) {
            return Err(TaskError::Finished { id: id.into() });
        }
        let sig = Signal::try_from(signal as i32).map_err(|source| TaskError::Kill { id: id.into(), signal, source })?;
        let pids = if all { t.container.cgroup.pids() } else { vec![t.container.pid] };
        for pid in pids {
            match kill(Pid::from_raw(pid), sig) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(source) => return Err(TaskError::Kill { id: id.into(), signal, source }),
            }
        }
        // A frozen process handles no signal, SIGKILL included, until it is thawed.
        if t.status == Status::Paused && sig == Signal::SIGKILL {
            t.container.cgroup.freeze(false).map_err(|e| TaskError::Freeze { id: id.into(), source: e })?;
        }
        Ok(())
    }

    /// Freezes (`pause`) or thaws the task's cgroup.
    pub fn pause_task(&self, id: &str, pause: bool) -> Result<(), TaskError> {
        let mut tasks = self.tasks();
        let t = tasks.get_mut(id).ok_or_else(|| TaskError::NotFound(id.to_string()))?;
        let (from, to, what) = if pause { (Status::Running, Status::Paused, "pause") } else { (Status::Paused, Status::Running, "resume") };
        if t.status != from {
            return Err(TaskError::WrongState { id: id.into(), what, state: t.status.name() });
        }
        t.container.cgroup.freeze(pause).map_err(|e| TaskError::Freeze { id: id.into(), source: e })?;
        t.status = to;
        drop(tasks);
        if pause {
            self.publish(TASK_PAUSED_EVENT_TOPIC, Box::new(TaskPaused { container_id: id.into(), ..Default::default() }));
        } else {
            self.publish(TASK_RESUMED_EVENT_TOPIC, Box::new(TaskResumed { container_id: id.into(), ..Default::default() }));
        }
        Ok(())
    }

    /// Blocks until the task stopped; returns its exit status and time.
    pub fn wait_task(&self, id: &str) -> Result<(u32, Timestamp), TaskError> {
        let mut tasks = self.tasks();
        loop {
            let t = tasks.get(id).ok_or_else(|| TaskError::NotFound(id.to_string()))?;
            if let Some(exit) = t.exit() {
                return Ok(exit);
            }
            tasks = self.inner.changed.wait(tasks).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn delete_task(&self, id: &str) -> Result<(u32, u32, Timestamp), TaskError> {
        {
            let tasks = self.tasks();
            let t = tasks.get(id).ok_or_else(|| TaskError::NotFound(id.to_string()))?;
            match t.status {
                Status::Running | Status::Paused => return Err(TaskError::WrongState { id: id.into(), what: "delete", state: t.status.name() }),
                // Never started: it waits for Start; kill it and let the reaper record it.
                Status::Created => {
                    let _ = kill(Pid::from_raw(t.container.pid), Signal::SIGKILL);
                }
                Status::Stopped { .. } => {}
            }
        }
        let (code, at) = self.wait_task(id)?;
        let t = self.tasks().remove(id).ok_or_else(|| TaskError::NotFound(id.to_string()))?;
        let mut problems = Vec::new();
        if let Err(e) = t.container.cgroup.remove() {
            problems.push(e.to_string());
        }
        if let Some(target) = &t.mounted_rootfs {
            if let Err(e) = unmount_rootfs(target) {
                problems.push(e.to_string());
            }
        }
        let pid = t.pid();
        self.publish(
            TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete { container_id: id.into(), id: id.into(), pid, exit_status: code, exited_at: Some(at.clone()).into(), ..Default::default() }),
        );
        if !problems.is_empty() {
            return Err(TaskError::Cleanup { id: id.into(), what: "cgroup and rootfs", message: problems.join("; ") });
        }
        info!(id; "container deleted");
        Ok((pid, code, at))
    }
}

fn ttrpc<T>(r: Result<T, TaskError>) -> TtrpcResult<T> {
    r.map_err(|e| to_ttrpc(&e))
}

fn no_exec(exec_id: &str, call: &'static str) -> TtrpcResult<()> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(to_ttrpc(&TaskError::Unsupported(call)))
    }
}

impl TaskApi for TaskService {
    fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        let pid = ttrpc(self.create_task(&req))?;
        Ok(CreateTaskResponse { pid, ..Default::default() })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        no_exec(&req.exec_id, "Start of an exec process")?;
        let pid = ttrpc(self.start_task(&req.id))?;
        Ok(StartResponse { pid, ..Default::default() })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        no_exec(&req.exec_id, "State of an exec process")?;
        let tasks = self.tasks();
        let t = ttrpc(tasks.get(&req.id).ok_or_else(|| TaskError::NotFound(req.id.clone())))?;
        let mut resp = StateResponse {
            id: t.id.clone(),
            bundle: t.bundle.display().to_string(),
            pid: t.pid(),
            status: t.status.api().into(),
            stdin: t.stdin.clone(),
            stdout: t.stdout.clone(),
            stderr: t.stderr.clone(),
            ..Default::default()
        };
        if let Some((code, at)) = t.exit() {
            resp.exit_status = code;
            resp.exited_at = Some(at).into();
        }
        Ok(resp)
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        no_exec(&req.exec_id, "Wait for an exec process")?;
        let (code, at) = ttrpc(self.wait_task(&req.id))?;
        Ok(WaitResponse { exit_status: code, exited_at: Some(at).into(), ..Default::default() })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        no_exec(&req.exec_id, "Kill of an exec process")?;
        ttrpc(self.kill_task(&req.id, req.signal, req.all))?;
        Ok(Empty::new())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        no_exec(&req.exec_id, "Delete of an exec process")?;
        let (pid, code, at) = ttrpc(self.delete_task(&req.id))?;
        Ok(DeleteResponse { pid, exit_status: code, exited_at: Some(at).into(), ..Default::default() })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let tasks = self.tasks();
        let t = ttrpc(tasks.get(&req.id).ok_or_else(|| TaskError::NotFound(req.id.clone())))?;
        let processes = t.container.cgroup.pids().into_iter().map(|p| ProcessInfo { pid: p as u32, ..Default::default() }).collect();
        Ok(PidsResponse { processes, ..Default::default() })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self.tasks().get(&req.id).map(|t| t.pid()).unwrap_or(0);
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

    // Not implemented yet: each answers UNIMPLEMENTED with the call's name (the generated
    // defaults answer NOT_FOUND, which containerd would take for a missing task).
    fn checkpoint(&self, _ctx: &TtrpcContext, _req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        Err(to_ttrpc(&TaskError::Unsupported("Checkpoint")))
    }

    fn exec(&self, _ctx: &TtrpcContext, _req: ExecProcessRequest) -> TtrpcResult<Empty> {
        Err(to_ttrpc(&TaskError::Unsupported("Exec")))
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, _req: ResizePtyRequest) -> TtrpcResult<Empty> {
        Err(to_ttrpc(&TaskError::Unsupported("ResizePty")))
    }

    fn close_io(&self, _ctx: &TtrpcContext, _req: CloseIORequest) -> TtrpcResult<Empty> {
        Err(to_ttrpc(&TaskError::Unsupported("CloseIO")))
    }

    fn update(&self, _ctx: &TtrpcContext, _req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        Err(to_ttrpc(&TaskError::Unsupported("Update")))
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let tasks = self.tasks();
        let t = ttrpc(tasks.get(&req.id).ok_or_else(|| TaskError::NotFound(req.id.clone())))?;
        let stats = ttrpc(crate::metrics::metrics(&t.container.cgroup).map_err(|message| TaskError::Stats { id: req.id.clone(), message }))?;
        Ok(StatsResponse { stats: Some(stats).into(), ..Default::default() })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        // The shim serves every container of its pod: it stays while any remains.
        if self.tasks().is_empty() {
            info!("last task gone: shutting down");
            self.inner.exit.signal();
        }
        Ok(Empty::new())
    }
}
