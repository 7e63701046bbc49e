//! Between Create and Start, through the shim's ttrpc API as containerd calls it: a wasm
//! task's module is instantiated ahead of Start unless instantiating it runs the module's own
//! code (a start function), nothing of the module runs before Start, and what fails in that
//! instantiation fails the Start call.

use std::path::Path;
use std::time::Duration;

use wshim_benches::shim::Workspace;

fn output(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn nothing_of_a_module_runs_before_start_and_a_failed_instantiation_fails_start() {
    wshim_e2e::require_env();
    let ws = Workspace::new("startgate").unwrap();
    ws.add_module("startfn.wasm").unwrap();
    ws.add_module("badimport.wasm").unwrap();
    let pod = format!("startgate-{}", std::process::id());
    let first = ws.bundle("gate-sandbox", Some(&pod), "sleep.wasm", &[]).unwrap();
    let shim = ws.start_shim("gate-sandbox", &first).unwrap();
    let ids = ["gate-startfn", "gate-hello", "gate-bad", "gate-sandbox"];
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cases = [("gate-startfn", "startfn.wasm", "init\nmain\n"), ("gate-hello", "hello.wasm", "Hello from WebAssembly on wasmedge-shim!\n")];
        for (id, module, want) in cases {
            let b = ws.bundle(id, Some(&pod), module, &[]).unwrap();
            let out = ws.dir().join(format!("{id}.out"));
            std::fs::write(&out, "").unwrap();
            shim.create(id, &b, out.to_str().unwrap()).unwrap();
            // startfn's start function prints: instantiated before Start, it would show here.
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(output(&out), "", "{id}: output before Start");
            shim.start(id).unwrap();
            assert_eq!(shim.wait(id).unwrap(), 0, "{id}");
            assert_eq!(shim.delete(id).unwrap(), 0, "{id}");
            assert_eq!(output(&out), want, "{id}");
        }
        // It loads and validates, so Create succeeds; its import is missing, so Start fails,
        // saying which, and the process is gone.
        let b = ws.bundle("gate-bad", Some(&pod), "badimport.wasm", &[]).unwrap();
        shim.create("gate-bad", &b, "").unwrap();
        let err = shim.start("gate-bad").unwrap_err().to_string();
        assert!(err.contains("instantiate: /badimport.wasm:") && err.contains("not provided: env.not_provided"), "{err}");
        assert_ne!(shim.wait("gate-bad").unwrap(), 0);
        shim.delete("gate-bad").unwrap();
    }));
    // Whatever a failure left: the shim only goes once it has no task.
    for id in ids {
        if shim.kill(id, 9).is_ok() {
            let _ = shim.wait(id);
        }
        let _ = shim.delete(id);
    }
    let _ = shim.shutdown();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    ws.check_clean().unwrap();
}
