use containerd_shim::protos::ttrpc::{self, Code};

/// Why a Task call failed. Each variant names the step and carries its input; [`to_ttrpc`]
/// is the one place they become ttrpc status codes.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("container {0}: not found")]
    NotFound(String),
    #[error("container {0}: already exists")]
    AlreadyExists(String),
    #[error("container {id}: mount rootfs {target}: {source}")]
    MountRootfs { id: String, target: String, source: std::io::Error },
    #[error("container {id}: {source}")]
    Bundle { id: String, source: wshim_oci::BundleError },
    #[error("container {id}: {source}")]
    Entrypoint { id: String, source: wshim_oci::EntryError },
    #[error("container {id}: {source}")]
    Spec { id: String, source: wshim_sandbox::PlanError },
    #[error("container {id}: {source}")]
    Create { id: String, source: wshim_sandbox::CreateError },
    #[error("container {id}: start: {source}")]
    Start { id: String, source: wshim_sandbox::CreateError },
    #[error("container {id}: {what} while the task is {state}")]
    WrongState { id: String, what: &'static str, state: &'static str },
    #[error("container {id}: process already finished")]
    Finished { id: String },
    #[error("container {id}: kill signal {signal}: {source}")]
    Kill { id: String, signal: u32, source: nix::errno::Errno },
    #[error("container {id}: freezer: {source}")]
    Freeze { id: String, source: wshim_sandbox::CgroupError },
    #[error("container {id}: stats: {message}")]
    Stats { id: String, message: String },
    #[error("container {id}: delete: {what}: {message}")]
    Cleanup { id: String, what: &'static str, message: String },
    #[error("container {id}: stdio: {source}")]
    Io { id: String, source: crate::stdio::IoError },
    #[error("container {id}: update resources: {source}")]
    Update { id: String, source: wshim_sandbox::CgroupError },
    #[error("container {id}: {field}: {message}")]
    BadRequest { id: String, field: &'static str, message: String },
    #[error("{0}: not supported by the wasmedge shim")]
    Unsupported(&'static str),
}

/// The ttrpc status for an error; containerd turns the code into its errdefs error, and
/// `ctr` prints the message.
pub fn to_ttrpc(e: &TaskError) -> ttrpc::Error {
    use wshim_sandbox::{CreateError, Step};
    let code = match e {
        TaskError::NotFound(_) => Code::NOT_FOUND,
        TaskError::AlreadyExists(_) => Code::ALREADY_EXISTS,
        TaskError::Bundle { .. } | TaskError::Entrypoint { .. } | TaskError::Spec { .. } | TaskError::BadRequest { .. } => Code::INVALID_ARGUMENT,
        TaskError::Update { source: wshim_sandbox::CgroupError::Unsupported { .. }, .. } => Code::INVALID_ARGUMENT,
        // A module that does not load, or a spec value the kernel rejects, is the caller's.
        TaskError::Create { source: CreateError::Setup(s), .. } if matches!(s.step, Step::Prepare | Step::Cwd | Step::Exec) => {
            Code::INVALID_ARGUMENT
        }
        TaskError::Create { source: CreateError::Cgroup(wshim_sandbox::CgroupError::Unsupported { .. }), .. } => Code::INVALID_ARGUMENT,
        TaskError::WrongState { .. } => Code::FAILED_PRECONDITION,
        TaskError::Finished { .. } => Code::NOT_FOUND,
        TaskError::Unsupported(_) => Code::UNIMPLEMENTED,
        TaskError::Io { .. } | TaskError::Update { .. } => Code::INTERNAL,
        TaskError::MountRootfs { .. } | TaskError::Create { .. } | TaskError::Start { .. } | TaskError::Kill { .. } | TaskError::Cleanup { .. } | TaskError::Freeze { .. } | TaskError::Stats { .. } => {
            Code::INTERNAL
        }
    };
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wshim_sandbox::{CreateError, SetupError, Step};

    fn code(e: TaskError) -> (Code, String) {
        match to_ttrpc(&e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn codes_and_messages() {
        assert_eq!(code(TaskError::NotFound("c".into())).0, Code::NOT_FOUND);
        assert_eq!(code(TaskError::AlreadyExists("c".into())).0, Code::ALREADY_EXISTS);
        assert_eq!(code(TaskError::Unsupported("Checkpoint")).0, Code::UNIMPLEMENTED);
        assert_eq!(code(TaskError::Finished { id: "c".into() }).0, Code::NOT_FOUND);
        assert_eq!(code(TaskError::WrongState { id: "c".into(), what: "start", state: "running" }).0, Code::FAILED_PRECONDITION);
        let (c, m) = code(TaskError::Create {
            id: "c".into(),
            source: CreateError::Setup(SetupError::new(Step::Prepare, "/m.wasm: not a valid wasm module")),
        });
        assert_eq!(c, Code::INVALID_ARGUMENT);
        assert!(m.contains("/m.wasm") && m.contains("prepare process"), "{m}");
        let (c, _) = code(TaskError::Create { id: "c".into(), source: CreateError::Setup(SetupError::new(Step::Mounts, "x")) });
        assert_eq!(c, Code::INTERNAL);
        let (c, m) = code(TaskError::Spec {
            id: "c".into(),
            source: wshim_sandbox::PlanError::Unsupported { field: "linux.seccomp".into(), why: "later" },
        });
        assert_eq!(c, Code::INVALID_ARGUMENT);
        assert!(m.starts_with("container c: linux.seccomp"), "{m}");
        let (c, m) = code(TaskError::BadRequest { id: "c".into(), field: "linux.resources", message: "expected value".into() });
        assert_eq!(c, Code::INVALID_ARGUMENT);
        assert_eq!(m, "container c: linux.resources: expected value");
        let unsupported = wshim_sandbox::CgroupError::Unsupported { field: "linux.resources.memory.swap", mode: wshim_sandbox::CgroupMode::V1, why: "off" };
        assert_eq!(code(TaskError::Update { id: "c".into(), source: unsupported }).0, Code::INVALID_ARGUMENT);
    }
}
