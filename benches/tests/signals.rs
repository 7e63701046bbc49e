//! Signals right around Start, through the shim's ttrpc API as containerd calls it: `ctr`
//! itself takes milliseconds between two calls, too slow to hit these windows.

use wshim_benches::shim::{Shim, Workspace};

const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

/// Task `id`'s exit status from Wait, or 137 if it had not exited 5 s after the call: then
/// it is SIGKILLed (over a connection of its own, the other one being blocked in the Wait).
fn wait_or_kill(shim: &Shim, id: &str) -> u32 {
    let (done, cancel) = std::sync::mpsc::channel::<()>();
    let (addr, task) = (shim.address().to_string(), id.to_string());
    let watchdog = std::thread::spawn(move || {
        if cancel.recv_timeout(std::time::Duration::from_secs(5)).is_err() {
            let _ = Shim::connect(&addr).and_then(|s| s.kill(&task, SIGKILL));
        }
    });
    let code = shim.wait(id).unwrap();
    let _ = done.send(());
    watchdog.join().unwrap();
    code
}

/// A task of `sleep.wasm` (600 s unless signalled) in the pod's shim.
fn sleeping(ws: &Workspace, shim: &Shim, id: &str, pod: &str) -> std::path::PathBuf {
    let b = ws.bundle(id, Some(pod), "sleep.wasm", &[]).unwrap();
    shim.create(id, &b, "").unwrap();
    b
}

#[test]
fn sigterm_right_after_start_or_before_it_ends_a_wasm_task_with_143() {
    wshim_e2e::require_env();
    let ws = Workspace::new("signals").unwrap();
    let pod = format!("signals-{}", std::process::id());
    let first = ws.bundle("sig-sandbox", Some(&pod), "sleep.wasm", &[]).unwrap();
    let shim = ws.start_shim("sig-sandbox", &first).unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Start answers without waiting for the process: the Kill that follows at once must
        // find its handlers (a wasm process is its pid namespace's init, which ignores a
        // signal it does not handle). Repeated, since the window is short.
        for i in 0..20 {
            let id = format!("sig-after-{i}");
            let b = sleeping(&ws, &shim, &id, &pod);
            shim.start(&id).unwrap();
            shim.kill(&id, SIGTERM).unwrap();
            assert_eq!(wait_or_kill(&shim, &id), 143, "{id}: SIGTERM right after Start");
            shim.delete(&id).unwrap();
            ws.remove_bundle(&b);
        }
        // Before Start: the created process ends too, as a created runc container does.
        let b = sleeping(&ws, &shim, "sig-before", &pod);
        shim.kill("sig-before", SIGTERM).unwrap();
        assert_eq!(wait_or_kill(&shim, "sig-before"), 143, "SIGTERM before Start");
        shim.delete("sig-before").unwrap();
        ws.remove_bundle(&b);
    }));
    // Whatever a failure left: the shim only goes once it has no task.
    let after = (0..20).map(|i| format!("sig-after-{i}"));
    for id in after.chain(["sig-before".to_string(), "sig-sandbox".to_string()]) {
        if shim.kill(&id, SIGKILL).is_ok() {
            let _ = shim.wait(&id);
        }
        let _ = shim.delete(&id);
    }
    let _ = shim.shutdown();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    ws.check_clean().unwrap();
}
