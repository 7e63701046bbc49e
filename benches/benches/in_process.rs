//! The in-process path of one container, without the fork: bundle (config.json) → plan →
//! module loaded and validated → WASI instantiated → `_start` entered and returned.
//! Also each stage alone, to see where the time goes.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use wshim_engine::{container_preopens, load_module, run_module, Outcome};
use wshim_oci::{detect, Bundle, Entrypoint};
use wshim_sandbox::{Plan, Stdio};

/// `_start` returns at once: the bench measures reaching it, not the program.
const ENTERED: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

fn bundle(dir: &Path) {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::write(rootfs.join("entered.wasm"), wat::parse_str(ENTERED).unwrap()).unwrap();
    // The shape of the spec ctr generates, trimmed to what the path reads.
    let cfg = serde_json::json!({
        "ociVersion": "1.1.0",
        "process": {"args": ["/entered.wasm"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
                  "cgroupsPath": "/default/bench"}
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

fn whole_path(dir: &Path) {
    let b = Bundle::load(dir).unwrap();
    let entry = detect(&b).unwrap();
    let plan = Plan::from_bundle("bench", &b, entry, Stdio::default()).unwrap();
    let Entrypoint::Wasm { module, func } = &plan.entry else { panic!("not wasm") };
    // Outside a container the module is at its host path.
    let host = b.rootfs.join(module.strip_prefix("/").unwrap());
    let loaded = load_module(&host, func).unwrap();
    let out = run_module(loaded, &plan.args, &plan.env, &container_preopens(&plan.cwd)).unwrap();
    assert_eq!(out, Outcome::Exited(0));
}

fn benches(c: &mut Criterion) {
    let d = tempfile::tempdir().unwrap();
    bundle(d.path());
    let module = d.path().join("rootfs/entered.wasm");
    c.bench_function("bundle_to_start_entered", |b| b.iter(|| whole_path(d.path())));
    c.bench_function("bundle_to_plan", |b| {
        b.iter(|| {
            let bundle = Bundle::load(d.path()).unwrap();
            let entry = detect(&bundle).unwrap();
            Plan::from_bundle("bench", &bundle, entry, Stdio::default()).unwrap()
        })
    });
    c.bench_function("load_and_validate_module", |b| b.iter(|| load_module(&module, "_start").unwrap()));
    c.bench_function("instantiate_and_run", |b| {
        b.iter_batched(
            || load_module(&module, "_start").unwrap(),
            |m| run_module(m, &["entered".into()], &[], &["/:/".into()]).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(in_process, benches);
criterion_main!(in_process);
