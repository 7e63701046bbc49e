//! `containerd-shim-wasmedge-v1`: what containerd execs for `start` and `delete`. It must
//! stay cheap to start, so it does not link WasmEdge; the daemon serves the Task API.
fn main() {
    wshim_protocol::run_front();
}
