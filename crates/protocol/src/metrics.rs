//! Task Stats: the container's cgroup counters in containerd's metric types, v1
//! (`io.containerd.cgroups.v1.Metrics`) or v2 (`io.containerd.cgroups.v2.Metrics`).

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use wshim_sandbox::{Cgroup, CgroupMode};

/// The metrics of `cg`, packed the way containerd's typeurl expects them.
pub(crate) fn metrics(cg: &Cgroup) -> Result<Any, String> {
    let (type_url, value) = match cg.mode {
        CgroupMode::V1 => ("io.containerd.cgroups.v1.Metrics", v1_metrics(cg).write_to_bytes()),
        CgroupMode::V2 => ("io.containerd.cgroups.v2.Metrics", v2_metrics(cg).write_to_bytes()),
    };
    Ok(Any { type_url: type_url.into(), value: value.map_err(|e| e.to_string())?, ..Default::default() })
}

fn limit(v: u64) -> u64 {
    // "max", and v1's page-rounded "no limit", both mean none: containerd reports 0.
    if v >= i64::MAX as u64 - 4096 {
        0
    } else {
        v
    }
}

pub(crate) fn v1_metrics(cg: &Cgroup) -> v1::Metrics {
    let stat = cg.read_keyed("memory", "memory.stat");
    let s = |k: &str| stat.get(k).copied().unwrap_or(0);
    let entry = |prefix: &str| v1::MemoryEntry {
        usage: cg.read_u64("memory", &format!("{prefix}usage_in_bytes")),
        limit: limit(cg.read_u64("memory", &format!("{prefix}limit_in_bytes"))),
        max: cg.read_u64("memory", &format!("{prefix}max_usage_in_bytes")),
        failcnt: cg.read_u64("memory", &format!("{prefix}failcnt")),
        ..Default::default()
    };
    let cpuacct = cg.read_keyed("cpuacct", "cpuacct.stat");
    // cpuacct.stat counts USER_HZ ticks (100 per second on Linux); the proto wants ns.
    let ticks = |k: &str| cpuacct.get(k).copied().unwrap_or(0) * 10_000_000;
    let throttle = cg.read_keyed("cpu", "cpu.stat");
    v1::Metrics {
        pids: Some(v1::PidsStat { current: cg.read_u64("pids", "pids.current"), limit: limit(cg.read_u64("pids", "pids.max")), ..Default::default() }).into(),
        cpu: Some(v1::CPUStat {
            usage: Some(v1::CPUUsage {
                total: cg.read_u64("cpuacct", "cpuacct.usage"),
                user: ticks("user"),
                kernel: ticks("system"),
                per_cpu: cg.read("cpuacct", "cpuacct.usage_percpu").unwrap_or_default().split_whitespace().filter_map(|n| n.parse().ok()).collect(),
                ..Default::default()
            })
            .into(),
            throttling: Some(v1::Throttle {
                periods: throttle.get("nr_periods").copied().unwrap_or(0),
                throttled_periods: throttle.get("nr_throttled").copied().unwrap_or(0),
                throttled_time: throttle.get("throttled_time").copied().unwrap_or(0),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        memory: Some(v1::MemoryStat {
            cache: s("cache"),
            rss: s("rss"),
            rss_huge: s("rss_huge"),
            mapped_file: s("mapped_file"),
            dirty: s("dirty"),
            writeback: s("writeback"),
            pg_pg_in: s("pgpgin"),
            pg_pg_out: s("pgpgout"),
            pg_fault: s("pgfault"),
            pg_maj_fault: s("pgmajfault"),
            inactive_anon: s("inactive_anon"),
            active_anon: s("active_anon"),
            inactive_file: s("inactive_file"),
            active_file: s("active_file"),
            unevictable: s("unevictable"),
            hierarchical_memory_limit: limit(s("hierarchical_memory_limit")),
            hierarchical_swap_limit: limit(s("hierarchical_memsw_limit")),
            total_cache: s("total_cache"),
            total_rss: s("total_rss"),
            total_rss_huge: s("total_rss_huge"),
            total_mapped_file: s("total_mapped_file"),
            total_dirty: s("total_dirty"),
            total_writeback: s("total_writeback"),
            total_pg_pg_in: s("total_pgpgin"),
            total_pg_pg_out: s("total_pgpgout"),
            total_pg_fault: s("total_pgfault"),
            total_pg_maj_fault: s("total_pgmajfault"),
            total_inactive_anon: s("total_inactive_anon"),
            total_active_anon: s("total_active_anon"),
            total_inactive_file: s("total_inactive_file"),
            total_active_file: s("total_active_file"),
            total_unevictable: s("total_unevictable"),
            usage: Some(entry("memory.")).into(),
            swap: Some(entry("memory.memsw.")).into(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

pub(crate) fn v2_metrics(cg: &Cgroup) -> v2::Metrics {
    let mem = cg.read_keyed("", "memory.stat");
    let m = |k: &str| mem.get(k).copied().unwrap_or(0);
    let cpu = cg.read_keyed("", "cpu.stat");
    let c = |k: &str| cpu.get(k).copied().unwrap_or(0);
    v2::Metrics {
        pids: Some(v2::PidsStat { current: cg.read_u64("", "pids.current"), limit: limit(cg.read_u64("", "pids.max")), ..Default::default() }).into(),
        cpu: Some(v2::CPUStat {
            usage_usec: c("usage_usec"),
            user_usec: c("user_usec"),
            system_usec: c("system_usec"),
            nr_periods: c("nr_periods"),
            nr_throttled: c("nr_throttled"),
            throttled_usec: c("throttled_usec"),
            ..Default::default()
        })
        .into(),
        memory: Some(v2::MemoryStat {
            anon: m("anon"),
            file: m("file"),
            kernel_stack: m("kernel_stack"),
            slab: m("slab"),
            sock: m("sock"),
            shmem: m("shmem"),
            file_mapped: m("file_mapped"),
            file_dirty: m("file_dirty"),
            file_writeback: m("file_writeback"),
            inactive_anon: m("inactive_anon"),
            active_anon: m("active_anon"),
            inactive_file: m("inactive_file"),
            active_file: m("active_file"),
            unevictable: m("unevictable"),
            pgfault: m("pgfault"),
            pgmajfault: m("pgmajfault"),
            usage: cg.read_u64("", "memory.current"),
            usage_limit: limit(cg.read_u64("", "memory.max")),
            swap_usage: cg.read_u64("", "memory.swap.current"),
            swap_limit: limit(cg.read_u64("", "memory.swap.max")),
            max_usage: cg.read_u64("", "memory.peak"),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_counters_come_from_the_cgroup_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "memory pids cpu").unwrap();
        let dir = d.path().join("c1");
        std::fs::create_dir(&dir).unwrap();
        for (f, v) in [
            ("memory.current", "4096\n"),
            ("memory.max", "max\n"),
            ("memory.stat", "anon 1000\nfile 2000\npgfault 7\n"),
            ("pids.current", "3\n"),
            ("pids.max", "64\n"),
            ("cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"),
        ] {
            std::fs::write(dir.join(f), v).unwrap();
        }
        let cg = Cgroup::locate(d.path(), "c1").unwrap();
        let m = v2_metrics(&cg);
        assert_eq!((m.pids.current, m.pids.limit), (3, 64));
        assert_eq!((m.memory.usage, m.memory.usage_limit, m.memory.anon, m.memory.file, m.memory.pgfault), (4096, 0, 1000, 2000, 7));
        assert_eq!((m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec), (1500, 1000, 500));
        let any = metrics(&cg).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        assert_eq!(v2::Metrics::parse_from_bytes(&any.value).unwrap(), m);
    }
}
