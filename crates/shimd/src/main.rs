//! `containerd-shim-wasmedge-v1-daemon`: serves the Task API. Its fork server is forked at
//! startup, before any thread, with WasmEdge already loaded (linked into this binary).
//! Wasm modules are AOT-compiled through the node's cache (`WSHIM_AOT_DIR`, default
//! /var/lib/wasmedge-shim/aot; `WSHIM_AOT=off` disables it), by this same binary run as a
//! compile helper (`aot-compile`).
use wshim_engine::aot::{helper_main, AotCache, CompileIn, HELPER_TIMEOUT};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(code) = helper_main(&args) {
        std::process::exit(code);
    }
    // `node-server PATH`: the node's fork server, forking a daemon per pod from this
    // already-loaded process (the front starts it on demand). It keeps the AOT cache's most
    // recently used module loaded for the next pod's fork server.
    if let (Some("node-server"), Some(path)) = (args.get(1).map(String::as_str), args.get(2)) {
        let cache = AotCache::from_env();
        let ahead = || cache.iter().for_each(wshim_engine::preload_for_new_pods);
        std::process::exit(wshim_protocol::run_node_server(std::path::Path::new(path), ahead, prepare, daemon));
    }
    std::process::exit(daemon(prepare(), &args));
}

/// What the daemon does before it knows its pod (a standby does it ahead of the request).
fn prepare() -> Result<wshim_protocol::Prepared, String> {
    wshim_protocol::prepare_daemon(|| wshim_sandbox::Zygote::fork(wshim_engine::WasmEdgePayload::default()))
}

/// The daemon proper, from its arguments (its own, or a fork request's).
fn daemon(prepared: Result<wshim_protocol::Prepared, String>, args: &[String]) -> i32 {
    if let Some(mut cache) = AotCache::from_env() {
        match std::env::current_exe() {
            Ok(exe) => {
                cache.compile_in = CompileIn::Helper { exe, timeout: HELPER_TIMEOUT };
                wshim_protocol::set_plan_hook(move |plan| wshim_engine::attach_aot(&cache, plan));
            }
            Err(e) => eprintln!("containerd-shim-wasmedge-v1-daemon: AOT cache off: no path to this executable: {e}"),
        }
    }
    wshim_protocol::run_daemon(args, prepared)
}
