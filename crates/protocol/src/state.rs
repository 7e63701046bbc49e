//! The task state machine: created → running → stopped → (deleted).

use std::path::PathBuf;
use std::time::SystemTime;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::types::task::Status as ApiStatus;
use wshim_sandbox::Container;

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

/// One container of this shim.
#[derive(Debug)]
pub(crate) struct Task {
    pub id: String,
    pub bundle: PathBuf,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub container: Container,
    /// Where we mounted containerd's rootfs mounts, to undo at Delete.
    pub mounted_rootfs: Option<PathBuf>,
    pub status: Status,
}

impl Task {
    pub(crate) fn pid(&self) -> u32 {
        self.container.pid as u32
    }

    pub(crate) fn exit(&self) -> Option<(u32, Timestamp)> {
        match self.status {
            Status::Stopped { code, at } => Some((code, Timestamp::from(at))),
            _ => None,
        }
    }
}
