//! `containerd-shim-wasmedge-v1-daemon`: serves the Task API. Its fork server is forked at
//! startup, before any thread, with WasmEdge already loaded (linked into this binary).
//! Wasm modules are AOT-compiled through the node's cache (`WSHIM_AOT_DIR`, default
//! /var/lib/wasmedge-shim/aot; `WSHIM_AOT=off` disables it).
fn main() {
    if let Some(cache) = wshim_engine::aot::AotCache::from_env() {
        wshim_protocol::set_plan_hook(move |plan| wshim_engine::attach_aot(&cache, plan));
    }
    wshim_protocol::run_daemon(|| wshim_sandbox::Zygote::fork(wshim_engine::WasmEdgePayload));
}
