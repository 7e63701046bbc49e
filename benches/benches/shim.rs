//! Shim-level cold start (issue 5): from just before the Create call to the module's `_start`
//! being entered, through a real shim daemon's ttrpc Task API. `_start` is seen entering by
//! its first action, a write to stdout (hello.wasm writes at once): stdout is a FIFO whose
//! read end we hold, and the clock stops when its first byte is readable. Start is included,
//! since `_start` runs only after Start.
//!
//! - `shim_cold_start/warm_shim_aot_cached`: Create + Start → first byte, through the daemon
//!   of a pod that already serves another task (its sandbox runs sleep.wasm), with the
//!   module's AOT artifact in the node cache (one task runs before measuring).
//! - `shim_cold_start/warm_shim_aot_cached_pod_namespaces`: the same, the task joining the
//!   sandbox's network, IPC and UTS namespaces by path as a Kubernetes pod's containers do
//!   (containerd's CRI plugin writes those paths), instead of getting new ones.
//! - `shim_cold_start/new_pod`: front `start` (the warm node fork server forks a daemon) +
//!   connect + Create + Start → first byte, the first container of a new pod.
//!
//! Wait, Delete and Shutdown run after the clock stops. Besides criterion's estimates, every
//! single measurement is kept and their p50/p99 written to target/bench/shim_cold_start.json
//! (benches/report.py prints them against the targets).
//! Runs inside the environment with the private containerd up (`make bench`).

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use wshim_benches::percentile;
use wshim_benches::shim::{Shim, StdoutFifo, Workspace};

const FIRST_BYTE_WITHIN: Duration = Duration::from_secs(10);

/// One hello task of `pod` through the warm `shim`; returns Create+Start → first byte.
/// With `sandbox_pid` the task joins the sandbox's network, IPC and UTS namespaces.
fn warm_once(ws: &Workspace, shim: &Shim, pod: &str, sandbox_pid: Option<u32>, n: usize) -> Duration {
    let id = format!("bench-warm-{n}");
    let b = ws.bundle_joining(&id, Some(pod), "hello.wasm", &[], sandbox_pid).unwrap();
    // The read end is open before Create, which opens the write end.
    let out = StdoutFifo::new(ws.dir().join(format!("{id}.out"))).unwrap();
    let t0 = Instant::now();
    let took = run_to_first_byte(shim, &id, &b, &out, t0);
    ws.remove_bundle(&b);
    took
}

/// Create+Start of `id` through `shim`; returns the time from `t0` to the first byte on
/// `out`, then waits (exit status 0) and deletes the task.
fn run_to_first_byte(shim: &Shim, id: &str, bundle: &Path, out: &StdoutFifo, t0: Instant) -> Duration {
    shim.create(id, bundle, out.path()).unwrap();
    shim.start(id).unwrap();
    out.wait_first_byte(FIRST_BYTE_WITHIN).unwrap();
    let took = t0.elapsed();
    assert_eq!(shim.wait(id).unwrap(), 0, "{id} exit status");
    shim.delete(id).unwrap();
    took
}

/// The first container of a new pod; returns front start + Create + Start → first byte.
fn new_pod_once(ws: &Workspace, n: usize) -> Duration {
    let id = format!("bench-newpod-{n}");
    let b = ws.bundle(&id, Some(&format!("{id}-pod")), "hello.wasm", &[]).unwrap();
    let out = StdoutFifo::new(ws.dir().join(format!("{id}.out"))).unwrap();
    let t0 = Instant::now();
    let shim = ws.start_shim(&id, &b).unwrap();
    let took = run_to_first_byte(&shim, &id, &b, &out, t0);
    shim.shutdown().unwrap();
    ws.remove_bundle(&b);
    took
}

fn summary(mut v: Vec<Duration>) -> serde_json::Value {
    v.sort();
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    serde_json::json!({ "samples": v.len(), "p50_ms": ms(percentile(&v, 50.0)), "p99_ms": ms(percentile(&v, 99.0)), "max_ms": ms(v.last().copied()) })
}

fn shim_cold_start(c: &mut Criterion) {
    let ws = Workspace::new("wshim-bench").unwrap();
    let pod = format!("bench-pod-{}", std::process::id());
    let sandbox = "bench-sandbox";
    let sb = ws.bundle(sandbox, Some(&pod), "sleep.wasm", &[]).unwrap();
    // Also starts the node fork server if it is not running yet.
    let shim = ws.start_shim(sandbox, &sb).unwrap();
    let sandbox_pid = shim.create(sandbox, &sb, "").unwrap();
    shim.start(sandbox).unwrap();
    // Not measured: the first Create compiles hello.wasm into the AOT cache; and one new pod
    // so that every node-level cost paid once is paid.
    warm_once(&ws, &shim, &pod, None, usize::MAX);
    new_pod_once(&ws, usize::MAX);

    let warm = RefCell::new(Vec::new());
    let warm_joined = RefCell::new(Vec::new());
    let fresh = RefCell::new(Vec::new());
    let mut g = c.benchmark_group("shim_cold_start");
    g.sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    // The task gets all five namespaces of `ctr run`'s default spec, a new network one included.
    // Then as a Kubernetes pod's container: network, IPC and UTS joined from the sandbox.
    for (name, joined, times) in [("warm_shim_aot_cached", None, &warm), ("warm_shim_aot_cached_pod_namespaces", Some(sandbox_pid), &warm_joined)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let n = times.borrow().len();
                    let d = warm_once(&ws, &shim, &pod, joined, n);
                    times.borrow_mut().push(d);
                    total += d;
                }
                total
            })
        });
    }
    g.sample_size(20);
    g.bench_function("new_pod", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let n = fresh.borrow().len();
                let d = new_pod_once(&ws, n);
                fresh.borrow_mut().push(d);
                total += d;
            }
            total
        })
    });
    g.finish();

    shim.kill(sandbox, nix::sys::signal::Signal::SIGKILL as u32).unwrap();
    shim.wait(sandbox).unwrap();
    shim.delete(sandbox).unwrap();
    shim.shutdown().unwrap();
    ws.check_clean().unwrap();

    // Criterion's warm-up iterations are included: each is a full measurement of the same
    // situation (the explicit warm-up above paid the one-time costs).
    let report = serde_json::json!({
        "warm_shim_aot_cached": summary(warm.into_inner()),
        "warm_shim_aot_cached_pod_namespaces": summary(warm_joined.into_inner()),
        "new_pod": summary(fresh.into_inner()),
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("shim_cold_start.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("shim_cold_start (every measurement): {report}");
}

criterion_group!(shim, shim_cold_start);
criterion_main!(shim);
