//! `linux.seccomp`: compiled to a BPF program in the shim (libseccomp), loaded by the
//! container process with one prctl.

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::LinuxSeccomp;
use std::str::FromStr;

use crate::plan::PlanError;

fn name_of<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn action(field: &str, name: &str, errno: Option<u32>) -> Result<ScmpAction, PlanError> {
    let ret = errno.map(|e| e as i32).unwrap_or(libc::EPERM);
    match name {
        "SCMP_ACT_ERRNO" => Ok(ScmpAction::Errno(ret)),
        "SCMP_ACT_TRACE" => Ok(ScmpAction::Trace(ret as u16)),
        "SCMP_ACT_NOTIFY" => Err(PlanError::Unsupported { field: field.into(), why: "seccomp user notification needs a listener, not implemented" }),
        other => ScmpAction::from_str(other, None).map_err(|e| PlanError::Invalid { field: field.into(), value: other.into(), why: e.to_string() }),
    }
}

/// Compiles the spec's filter to BPF. Syscalls this libseccomp does not know are skipped,
/// as runc and crun skip them: a profile names syscalls of many kernels.
/// Compiled filters by their spec: pods and repeated containers send the same profile
/// (containerd's default one, mostly), and compiling it costs more than the rest of a plan.
static COMPILED: std::sync::Mutex<Vec<(String, Vec<u8>)>> = std::sync::Mutex::new(Vec::new());
const COMPILED_KEEP: usize = 16;

/// [`compile_uncached`], once per distinct profile (the last few kept).
pub(crate) fn compile(s: &LinuxSeccomp) -> Result<Vec<u8>, PlanError> {
    let key = serde_json::to_string(s).unwrap_or_default();
    if let Some((_, bpf)) = COMPILED.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(k, _)| *k == key) {
        return Ok(bpf.clone());
    }
    let bpf = compile_uncached(s)?;
    let mut cache = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= COMPILED_KEEP {
        cache.remove(0);
    }
    cache.push((key, bpf.clone()));
    Ok(bpf)
}

pub(crate) fn compile_uncached(s: &LinuxSeccomp) -> Result<Vec<u8>, PlanError> {
    let invalid = |field: String, value: String, e: libseccomp::error::SeccompError| PlanError::Invalid { field, value, why: e.to_string() };
    if s.listener_path().is_some() {
        return Err(PlanError::Unsupported { field: "linux.seccomp.listenerPath".into(), why: "seccomp user notification is not implemented" });
    }
    let default = action("linux.seccomp.defaultAction", &name_of(&s.default_action()), s.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| invalid("linux.seccomp".into(), String::new(), e))?;
    // no_new_privs is the spec's to set (process.noNewPrivileges), not libseccomp's.
    ctx.set_ctl_nnp(false).map_err(|e| invalid("linux.seccomp".into(), "nnp".into(), e))?;
    for (i, f) in s.flags().clone().unwrap_or_default().iter().enumerate() {
        let field = format!("linux.seccomp.flags[{i}]");
        match name_of(f).as_str() {
            "SECCOMP_FILTER_FLAG_LOG" => {
                ctx.set_ctl_log(true).map_err(|e| invalid(field, "LOG".into(), e))?;
            }
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => {
                ctx.set_ctl_ssb(true).map_err(|e| invalid(field, "SPEC_ALLOW".into(), e))?;
            }
            // A single-threaded process: there are no other threads to synchronise.
            "SECCOMP_FILTER_FLAG_TSYNC" => {}
            other => return Err(PlanError::Unsupported { field, why: if other.is_empty() { "unknown flag" } else { "not implemented" } }),
        }
    }
    for (i, a) in s.architectures().clone().unwrap_or_default().iter().enumerate() {
        let name = name_of(a);
        let arch = ScmpArch::from_str(&name).map_err(|e| invalid(format!("linux.seccomp.architectures[{i}]"), name.clone(), e))?;
        ctx.add_arch(arch).map_err(|e| invalid(format!("linux.seccomp.architectures[{i}]"), name, e))?;
    }
    for (i, sc) in s.syscalls().clone().unwrap_or_default().iter().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let act = action(&format!("{field}.action"), &name_of(&sc.action()), sc.errno_ret())?;
        // libseccomp refuses a rule that repeats the default action; it would change nothing.
        if act == default {
            continue;
        }
        let mut conds = Vec::new();
        for (j, a) in sc.args().clone().unwrap_or_default().iter().enumerate() {
            let op = match name_of(&a.op()).as_str() {
                "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
                "SCMP_CMP_LT" => ScmpCompareOp::Less,
                "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
                "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
                "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
                "SCMP_CMP_GT" => ScmpCompareOp::Greater,
                "SCMP_CMP_MASKED_EQ" => ScmpCompareOp::MaskedEqual(a.value()),
                other => return Err(PlanError::Invalid { field: format!("{field}.args[{j}].op"), value: other.into(), why: "unknown operator".into() }),
            };
            let datum = if matches!(op, ScmpCompareOp::MaskedEqual(_)) { a.value_two().unwrap_or(0) } else { a.value() };
            conds.push(ScmpArgCompare::new(a.index() as u32, op, datum));
        }
        for name in sc.names() {
            let Ok(nr) = ScmpSyscall::from_name(name) else { continue };
            let r = if conds.is_empty() { ctx.add_rule(act, nr) } else { ctx.add_rule_conditional(act, nr, &conds) };
            r.map_err(|e| invalid(format!("{field}.names"), name.clone(), e))?;
        }
    }
    ctx.export_bpf_mem().map_err(|e| invalid("linux.seccomp".into(), "export".into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn compiles_an_allowlist_profile() {
        let s = spec(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["read", "write", "exit_group", "no_such_syscall_anywhere"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ]
        }));
        let bpf = compile(&s).unwrap();
        assert!(!bpf.is_empty() && bpf.len() % 8 == 0, "a BPF program is whole sock_filter entries");
        // The cached program is the one a fresh compile gives; another profile gets its own.
        assert_eq!(compile(&s).unwrap(), bpf);
        assert_eq!(compile_uncached(&s).unwrap(), bpf);
        let other = spec(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO"}]}));
        assert_ne!(compile(&other).unwrap(), bpf);
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let e = compile(&spec(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x.sock"}))).unwrap_err();
        assert!(e.to_string().starts_with("linux.seccomp.listenerPath"), "{e}");
        let e = compile(&spec(serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"}))).unwrap_err();
        assert!(e.to_string().starts_with("linux.seccomp.defaultAction"), "{e}");
    }
}
