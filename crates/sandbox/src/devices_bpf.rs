//! cgroup v2 device rules: `linux.resources.devices` compiled to a
//! BPF_PROG_TYPE_CGROUP_DEVICE program, loaded with bpf(2) and attached to the container's
//! cgroup directory. cgroup v2 has no devices.allow/deny files; the kernel asks the program
//! on every open/mknod of a device node in the cgroup (0 = deny with EPERM, 1 = allow).
//!
//! Semantics, as runc and crun give them:
//! * the last rule that matches a request decides it, so rules are emitted in reverse order;
//! * a rule matches when its type (`a` = any), major and minor (absent = any) match and the
//!   requested access is a subset of the rule's `access`;
//! * a rule for every device (`a`, no numbers, `rwm`) decides everything before it, so no
//!   earlier rule is emitted after it; it is how the usual first rule "deny all" makes the
//!   default a deny;
//! * without such a rule, what no rule matches is allowed, as a fresh v1 devices cgroup
//!   (which inherits its parent's allow-all) would do.
//!
//! The instructions are emitted here: the program is a few dozen fixed-shape instructions,
//! which does not warrant an eBPF toolchain crate.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

#[derive(Debug, thiserror::Error)]
pub enum DeviceFilterError {
    #[error("linux.resources.devices[{index}].access: invalid value {value:?}: only the letters r, w and m")]
    Access { index: usize, value: String },
    #[error("linux.resources.devices[{index}].type: {typ:?} cannot be a device cgroup rule (a, b or c)")]
    Type { index: usize, typ: String },
    #[error("linux.resources.devices[{index}].{field}: invalid value {value}: must be a device number (0..2^32) or absent")]
    Number { index: usize, field: &'static str, value: i64 },
    #[error("linux.resources.devices: load the cgroup device program: {source}{}", if log.is_empty() { String::new() } else { format!("; verifier: {log}") })]
    Load { source: std::io::Error, log: String },
    #[error("linux.resources.devices: attach the device program to {path}: {source}")]
    Attach { path: String, source: std::io::Error },
}

/// One device cgroup rule, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    /// `None` is `a` (block and char).
    pub kind: Option<u32>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// BPF_DEVCG_ACC_* bits.
    pub access: u32,
}

// From linux/bpf.h.
const BPF_DEVCG_ACC_MKNOD: u32 = 1;
const BPF_DEVCG_ACC_READ: u32 = 2;
const BPF_DEVCG_ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE;
const BPF_DEVCG_DEV_BLOCK: u32 = 1;
const BPF_DEVCG_DEV_CHAR: u32 = 2;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// Checks the spec's rules and turns them into [`Rule`]s, naming the bad field.
pub fn rules(devices: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, DeviceFilterError> {
    devices
        .iter()
        .enumerate()
        .map(|(index, d)| {
            let kind = match d.typ() {
                None | Some(LinuxDeviceType::A) => None,
                Some(LinuxDeviceType::C) => Some(BPF_DEVCG_DEV_CHAR),
                Some(LinuxDeviceType::B) => Some(BPF_DEVCG_DEV_BLOCK),
                Some(t) => return Err(DeviceFilterError::Type { index, typ: t.as_str().to_string() }),
            };
            let number = |field: &'static str, n: Option<i64>| match n {
                None | Some(-1) => Ok(None),
                Some(v) if (0..=u32::MAX as i64).contains(&v) => Ok(Some(v as u32)),
                Some(value) => Err(DeviceFilterError::Number { index, field, value }),
            };
            let access_text = d.access().clone().unwrap_or_else(|| "rwm".into());
            let mut access = 0;
            for c in access_text.chars() {
                access |= match c {
                    'r' => BPF_DEVCG_ACC_READ,
                    'w' => BPF_DEVCG_ACC_WRITE,
                    'm' => BPF_DEVCG_ACC_MKNOD,
                    _ => return Err(DeviceFilterError::Access { index, value: access_text.clone() }),
                };
            }
            // An empty access string is what runc reads as "rwm".
            if access == 0 {
                access = ACC_ALL;
            }
            Ok(Rule { allow: d.allow(), kind, major: number("major", d.major())?, minor: number("minor", d.minor())?, access })
        })
        .collect()
}

/// One eBPF instruction (struct bpf_insn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes (class | op | source).
const LDX_MEM_W: u8 = 0x61;
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_X: u8 = 0xbc;
const ALU64_MOV_K: u8 = 0xb7;
const JMP_JNE_K: u8 = 0x55;
const JMP_EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | (dst & 0x0f), off, imm }
}

/// The program for `rules`. Registers: R1 = ctx (then scratch), R2 = type, R3 = access,
/// R4 = major, R5 = minor (struct bpf_cgroup_dev_ctx: access_type, major, minor, with the
/// type in access_type's low 16 bits and the access in its high 16).
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    let mut default_allow = true;
    for r in rules.iter().rev() {
        // Tests that skip to the next rule when they fail; each jumps over the rest of its block.
        let mut tests: Vec<Vec<Insn>> = Vec::new();
        if let Some(k) = r.kind {
            tests.push(vec![insn(JMP_JNE_K, 2, 0, 0, k as i32)]);
        }
        if r.access != ACC_ALL {
            // (access & ~rule.access) != 0: something asked for is not granted by this rule.
            tests.push(vec![insn(ALU32_MOV_X, 1, 3, 0, 0), insn(ALU32_AND_K, 1, 0, 0, !(r.access as i32)), insn(JMP_JNE_K, 1, 0, 0, 0)]);
        }
        if let Some(m) = r.major {
            tests.push(vec![insn(JMP_JNE_K, 4, 0, 0, m as i32)]);
        }
        if let Some(m) = r.minor {
            tests.push(vec![insn(JMP_JNE_K, 5, 0, 0, m as i32)]);
        }
        if tests.is_empty() {
            // Matches every request: it decides, and the earlier rules can never be reached.
            default_allow = r.allow;
            break;
        }
        let verdict = [insn(ALU64_MOV_K, 0, 0, 0, r.allow as i32), insn(JMP_EXIT, 0, 0, 0, 0)];
        let block_len: usize = tests.iter().map(Vec::len).sum::<usize>() + verdict.len();
        let mut at = 0;
        for t in tests {
            at += t.len();
            let (jump, setup) = t.split_last().unwrap();
            p.extend_from_slice(setup);
            p.push(Insn { off: (block_len - at) as i16, ..*jump });
        }
        p.extend_from_slice(&verdict);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, default_allow as i32));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

/// union bpf_attr for BPF_PROG_LOAD, up to expected_attach_type (the kernel zero-extends a
/// shorter attr).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// union bpf_attr for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i32> {
    // SAFETY: `attr` is a repr(C) prefix of union bpf_attr for `cmd`, valid for the call's
    // duration, and its size is passed; pointers inside it point at live buffers.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// Loads `insns` as a cgroup device program. On a verifier refusal, the error carries its log.
pub fn load(insns: &[Insn]) -> Result<OwnedFd, DeviceFilterError> {
    let license = c"Apache-2.0";
    let try_load = |log: &mut [u8]| {
        let mut name = [0u8; 16];
        name[..9].copy_from_slice(b"wshim_dev");
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: if log.is_empty() { 0 } else { 1 },
            log_size: log.len() as u32,
            log_buf: if log.is_empty() { 0 } else { log.as_mut_ptr() as u64 },
            prog_name: name,
            ..Default::default()
        };
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    match try_load(&mut []) {
        // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(source) => {
            // Again with the verifier's log, to say why.
            let mut log = vec![0u8; 1 << 16];
            let _ = try_load(&mut log);
            let end = log.iter().position(|b| *b == 0).unwrap_or(0);
            let log = String::from_utf8_lossy(&log[..end]).trim().replace('\n', "; ");
            Err(DeviceFilterError::Load { source, log })
        }
    }
}

/// Compiles, loads and attaches `devices` to the v2 cgroup directory `dir`. The attachment
/// keeps the program alive; removing the cgroup drops both. BPF_F_ALLOW_MULTI, as runc does,
/// lets a nested runtime attach programs below (the kernel runs all, any deny wins).
pub fn apply(dir: &Path, devices: &[LinuxDeviceCgroup]) -> Result<(), DeviceFilterError> {
    let prog = load(&program(&rules(devices)?))?;
    let attach_err = |source| DeviceFilterError::Attach { path: dir.display().to_string(), source };
    let cg = std::fs::File::open(dir).map_err(attach_err)?;
    let mut attr = ProgAttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(attach_err)?;
    log::debug!(cgroup = dir.display().to_string().as_str(), rules = devices.len(); "device program attached");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_rules(json: serde_json::Value) -> Vec<LinuxDeviceCgroup> {
        serde_json::from_value(json).unwrap()
    }

    /// Runs `p` the way the kernel would on one request: a tiny interpreter for the few
    /// opcodes `program` emits, so the generated jumps are checked, not just their shape.
    fn run(p: &[Insn], kind: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [(access << 16) | kind, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    r[dst] = ctx[i.off as usize / 4] as u64;
                }
                ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                ALU32_RSH_K => r[dst] = (r[dst] as u32 >> i.imm) as u64,
                ALU32_MOV_X => r[dst] = r[src] as u32 as u64,
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                JMP_JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                JMP_EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    const C: u32 = BPF_DEVCG_DEV_CHAR;
    const B: u32 = BPF_DEVCG_DEV_BLOCK;
    const R: u32 = BPF_DEVCG_ACC_READ;
    const W: u32 = BPF_DEVCG_ACC_WRITE;
    const M: u32 = BPF_DEVCG_ACC_MKNOD;

    #[test]
    fn containerd_default_rules_allow_only_the_listed_devices() {
        // The shape of containerd's default: deny all, then allow what the container needs.
        let rules = rules(&spec_rules(serde_json::json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "r"},
            {"allow": true, "type": "c", "major": 136, "access": "rwm"}
        ])))
        .unwrap();
        let p = program(&rules);
        assert_eq!(run(&p, C, R | W, 1, 3), 1, "/dev/null rw");
        assert_eq!(run(&p, C, M, 1, 3), 1, "/dev/null mknod");
        assert_eq!(run(&p, C, R, 1, 5), 1, "/dev/zero read");
        assert_eq!(run(&p, C, R | W, 1, 5), 0, "/dev/zero write is not granted");
        assert_eq!(run(&p, C, R, 1, 7), 0, "/dev/full is not listed");
        assert_eq!(run(&p, B, R, 1, 3), 0, "a block device 1:3 is not /dev/null");
        assert_eq!(run(&p, C, R | W, 136, 42), 1, "a wildcard minor");
        // The deny-all rule is the default, not a block of its own.
        assert_eq!(p.last().unwrap().code, JMP_EXIT);
        assert_eq!(p[p.len() - 2], insn(ALU64_MOV_K, 0, 0, 0, 0));
    }

    #[test]
    fn the_last_matching_rule_wins() {
        let rules = rules(&spec_rules(serde_json::json!([
            {"allow": true, "type": "c", "major": 1, "access": "rwm"},
            {"allow": false, "type": "c", "major": 1, "minor": 7, "access": "rwm"}
        ])))
        .unwrap();
        let p = program(&rules);
        assert_eq!(run(&p, C, R, 1, 7), 0, "the later deny wins over the earlier allow");
        assert_eq!(run(&p, C, R, 1, 3), 1);
        assert_eq!(run(&p, B, R, 8, 0), 1, "no deny-all rule: unmatched requests are allowed, as on v1");
    }

    #[test]
    fn a_later_allow_all_makes_earlier_rules_unreachable() {
        let rules = rules(&spec_rules(serde_json::json!([
            {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": true, "access": "rwm"}
        ])))
        .unwrap();
        let p = program(&rules);
        assert_eq!(p.len(), 6 + 2, "only the context loads and the allow-all verdict");
        assert_eq!(run(&p, C, R, 1, 3), 1);
    }

    #[test]
    fn bad_rules_name_their_field() {
        let e = rules(&spec_rules(serde_json::json!([{"allow": true, "access": "rwx"}]))).unwrap_err().to_string();
        assert!(e.starts_with("linux.resources.devices[0].access"), "{e}");
        let e = rules(&spec_rules(serde_json::json!([{"allow": true, "access": "r"}, {"allow": true, "type": "p", "access": "r"}])))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("linux.resources.devices[1].type"), "{e}");
        let e = rules(&spec_rules(serde_json::json!([{"allow": true, "type": "c", "major": -5, "access": "r"}]))).unwrap_err().to_string();
        assert!(e.starts_with("linux.resources.devices[0].major"), "{e}");
    }
}
