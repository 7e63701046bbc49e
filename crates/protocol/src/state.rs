//! The task state machine: created → running → stopped → (deleted).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::types::task::Status as ApiStatus;
use wshim_sandbox::{Container, OomWatch, Plan};

use crate::stdio::Relays;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Created,
    Running,
    Paused,
    Stopped { code: u32, at: SystemTime },
}

impl Status {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped { .. } => "stopped",
        }
    }

    pub(crate) fn api(&self) -> ApiStatus {
        match self {
            Status::Created => ApiStatus::CREATED,
            Status::Running => ApiStatus::RUNNING,
            Status::Paused => ApiStatus::PAUSED,
            Status::Stopped { .. } => ApiStatus::STOPPED,
        }
    }
}

/// A process of a task: the container's own (init) or an exec.
pub(crate) struct Proc {
    pub process: Container,
    pub status: Status,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    pub io: Relays,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.process.pid as u32
    }

    pub(crate) fn exit(&self) -> Option<(u32, Timestamp)> {
        match self.status {
            Status::Stopped { code, at } => Some((code, Timestamp::from(at))),
            _ => None,
        }
    }
}

/// One container of this shim.
pub(crate) struct Task {
    pub id: String,
    pub bundle: PathBuf,
    pub init: Proc,
    pub execs: HashMap<String, Proc>,
    /// The validated plan the container was created from: exec processes derive theirs.
    pub plan: Plan,
    /// Where we mounted containerd's rootfs mounts, to undo at Delete.
    pub mounted_rootfs: Option<PathBuf>,
    /// Readable when the container's cgroup runs out of memory.
    pub oom: Option<OomWatch>,
    /// OOM kills already reported.
    pub oom_kills: u64,
}

impl Task {
    /// The init process (`exec_id` empty) or an exec process.
    pub(crate) fn proc(&self, exec_id: &str) -> Option<&Proc> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id)
        }
    }

    pub(crate) fn proc_mut(&mut self, exec_id: &str) -> Option<&mut Proc> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }
}
