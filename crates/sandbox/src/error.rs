use std::fmt;

/// A numbered step of the container child's setup; reported with any failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Step {
    Session,
    JoinCgroup,
    JoinNamespace,
    UserNamespace,
    UnshareCgroupNs,
    OpenStdio,
    Console,
    Mounts,
    PivotRoot,
    Hostname,
    Sysctl,
    Cwd,
    Rlimits,
    Prepare,
    User,
    Capabilities,
    NoNewPrivs,
    Seccomp,
    CloseFds,
    Instantiate,
    Exec,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Step::Session => "setsid",
            Step::JoinCgroup => "join cgroup",
            Step::JoinNamespace => "join namespace",
            Step::UserNamespace => "user namespace",
            Step::UnshareCgroupNs => "new cgroup namespace",
            Step::OpenStdio => "open stdio",
            Step::Console => "process.terminal",
            Step::Mounts => "mounts",
            Step::PivotRoot => "pivot_root",
            Step::Hostname => "hostname",
            Step::Sysctl => "linux.sysctl",
            Step::Cwd => "process.cwd",
            Step::Rlimits => "process.rlimits",
            Step::Prepare => "prepare process",
            Step::User => "process.user",
            Step::Capabilities => "process.capabilities",
            Step::NoNewPrivs => "process.noNewPrivileges",
            Step::Seccomp => "linux.seccomp",
            Step::CloseFds => "close inherited fds",
            Step::Instantiate => "instantiate",
            Step::Exec => "execve",
        };
        f.write_str(s)
    }
}

/// A failure inside the container child, as reported back to the shim.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("container setup failed at {step}: {message}")]
pub struct SetupError {
    pub step: Step,
    pub message: String,
}

impl SetupError {
    pub fn new(step: Step, message: impl fmt::Display) -> Self {
        SetupError { step, message: message.to_string() }
    }
}

/// `result.ctx(Step::X, "what")` turns any error into a [`SetupError`] naming the step.
pub(crate) trait Ctx<T> {
    fn ctx(self, step: Step, what: impl fmt::Display) -> Result<T, SetupError>;
}

impl<T, E: fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, step: Step, what: impl fmt::Display) -> Result<T, SetupError> {
        self.map_err(|e| SetupError::new(step, format!("{what}: {e}")))
    }
}
