//! `containerd-shim-wasmedge-v1-daemon`: serves the Task API. Its fork server is forked at
//! startup, before any thread, with WasmEdge already loaded (linked into this binary).
fn main() {
    wshim_protocol::run_daemon(|| wshim_sandbox::Zygote::fork(wshim_engine::WasmEdgePayload));
}
