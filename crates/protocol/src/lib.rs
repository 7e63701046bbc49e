//! The containerd shim v2 side: the `start` and `delete` commands, the ttrpc Task service
//! and its task state machine, events, and the mapping of errors to ttrpc codes. It drives
//! the sandbox crate and knows nothing about WasmEdge: the fork server it is handed decides
//! how a wasm process runs.

mod daemon;
mod error;
mod events;
mod front;
mod metrics;
mod server;
mod service;
mod state;
mod stdio;

pub use error::{to_ttrpc, TaskError};
pub use front::{cleanup_bundle, run_front, DAEMON_NAME};
pub use daemon::{node_socket, prepare_daemon, run_daemon, run_node_server, Prepared};
pub use service::{set_plan_hook, TaskService};

/// The runtime type containerd knows us by.
pub const RUNTIME_ID: &str = "io.containerd.wasmedge.v1";
/// Where cgroupfs is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Pods share one shim: containers with this annotation group by it.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
