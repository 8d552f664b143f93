//! What a partition's nodes offer, as `sinfo` reports it, and whether a job's request
//! fits.
//!
//! A job that asks for more CPUs, memory, GPUs or time than any node of its partition
//! has is often accepted by `sbatch` and then waits forever (`squeue` reason
//! `PartitionConfig` or `PartitionTimeLimit`): whether SLURM refuses it at once depends on
//! the site's `EnforcePartLimits`. So hpcstage compares the request with
//! `sinfo --Node --format=%P|%c|%m|%G|%l` before submitting and warns. This module parses
//! and compares; `client/` runs `sinfo`. It prints nothing.

use crate::duration::SlurmDuration;
use crate::sbatch::SbatchArgs;

/// The `--format` for [`parse_sinfo`]: partition (`*` marks the default), CPUs, memory
/// (MB), generic resources and time limit, one line per node and partition (`--Node`).
pub const SINFO_FORMAT: &str = "%P|%c|%m|%G|%l";

/// The largest node of a partition and its time limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionLimits {
    pub name: String,
    /// The cluster's default partition (`debug*` in sinfo).
    pub is_default: bool,
    pub max_cpus: u32,
    pub max_mem_mb: u64,
    pub max_gpus: u32,
    /// `None`: no limit (`infinite`).
    pub time_limit: Option<SlurmDuration>,
}

/// `16G` → 16384 (megabytes, as `SLURM_MEM_PER_NODE` and `sinfo %m`); a bare number is
/// megabytes.
pub fn mem_to_mb(mem: &str) -> Option<u64> {
    let m = mem.trim();
    let (num, unit) = m.split_at(m.find(|c: char| !c.is_ascii_digit()).unwrap_or(m.len()));
    let n: u64 = num.parse().ok()?;
    match unit.to_ascii_uppercase().as_str() {
        "K" => Some(n.div_ceil(1024)),
        "" | "M" => Some(n),
        "G" => n.checked_mul(1024),
        "T" => n.checked_mul(1024 * 1024),
        _ => None,
    }
}

/// GPUs in a gres list: `gpu:2`, `gpu:a100:4(S:0-1)`, `gpu` (one), several entries
/// summed; `(null)` and other resources count nothing.
pub fn gpus_in_gres(gres: &str) -> u32 {
    gres.split(',')
        .map(|item| {
            let item = item.split('(').next().unwrap_or("").trim();
            let item = item.strip_prefix("gres/").unwrap_or(item);
            let mut parts = item.split(':');
            if parts.next() != Some("gpu") {
                return 0;
            }
            match parts.next_back() {
                None => 1,
                Some(last) => last.parse().unwrap_or(1),
            }
        })
        .sum()
}

/// Parses `sinfo --noheader --Node --format=<SINFO_FORMAT>`, folding nodes into their
/// partitions. Lines that do not parse are skipped (a warning must not fail a
/// submission).
pub fn parse_sinfo(text: &str) -> Vec<PartitionLimits> {
    let mut out: Vec<PartitionLimits> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.trim().splitn(5, '|').collect();
        let [name, cpus, mem, gres, time] = f[..] else {
            continue;
        };
        let is_default = name.ends_with('*');
        let name = name.trim_end_matches('*').to_string();
        let cpus: u32 = cpus.trim_end_matches('+').parse().unwrap_or(0);
        let mem: u64 = mem.trim_end_matches('+').parse().unwrap_or(0);
        let gpus = gpus_in_gres(gres);
        let time_limit = match time.trim() {
            "infinite" | "UNLIMITED" | "" | "n/a" => None,
            t => SlurmDuration::parse(t).ok(),
        };
        match out.iter_mut().find(|p| p.name == name) {
            Some(p) => {
                p.is_default |= is_default;
                p.max_cpus = p.max_cpus.max(cpus);
                p.max_mem_mb = p.max_mem_mb.max(mem);
                p.max_gpus = p.max_gpus.max(gpus);
            }
            None => out.push(PartitionLimits {
                name,
                is_default,
                max_cpus: cpus,
                max_mem_mb: mem,
                max_gpus: gpus,
                time_limit,
            }),
        }
    }
    out
}

/// What in `args` exceeds what its partition (or the default one) offers, one sentence
/// each; empty when it fits or the partition is unknown to `sinfo`.
pub fn exceeds(partitions: &[PartitionLimits], args: &SbatchArgs) -> Vec<String> {
    let part = match &args.partition {
        Some(name) => partitions.iter().find(|p| &p.name == name),
        None => partitions.iter().find(|p| p.is_default),
    };
    let Some(p) = part else {
        return match &args.partition {
            Some(name) if !partitions.is_empty() => vec![format!(
                "partition {name} is not one sinfo lists ({})",
                partitions
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )],
            _ => Vec::new(),
        };
    };
    let mut out = Vec::new();
    let name = &p.name;
    if let Some(c) = args.cpus_per_task.filter(|&c| c > p.max_cpus) {
        out.push(format!(
            "asks for {c} CPUs per task; the nodes of partition {name} have at most {}",
            p.max_cpus
        ));
    }
    if let Some(mb) = args.mem.as_deref().and_then(mem_to_mb) {
        if mb > p.max_mem_mb {
            out.push(format!(
                "asks for {} of memory; the nodes of partition {name} have at most {} MB",
                args.mem.as_deref().unwrap_or_default(),
                p.max_mem_mb
            ));
        }
    }
    let gpus = args.gres.as_deref().map_or(0, gpus_in_gres);
    if gpus > p.max_gpus {
        out.push(format!(
            "asks for {gpus} GPUs; the nodes of partition {name} have at most {}",
            p.max_gpus
        ));
    }
    if let (Some(t), Some(limit)) = (args.time, p.time_limit) {
        if t > limit {
            out.push(format!(
                "asks for a time limit of {}; partition {name} allows at most {}",
                t.to_slurm(),
                limit.to_slurm()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINFO: &str = "debug*|2|4000|gpu:2|infinite\n\
                         gpu|2|4000|gpu:2|infinite\n\
                         gpu|8|64000|gpu:a100:4(S:0-1)|2-00:00:00\n\
                         short|4|8000|(null)|30:00\n";

    #[test]
    fn nodes_fold_into_partitions_with_their_largest_node() {
        let parts = parse_sinfo(SINFO);
        assert_eq!(parts.len(), 3);
        assert!(parts[0].is_default);
        let gpu = &parts[1];
        assert_eq!((gpu.max_cpus, gpu.max_mem_mb, gpu.max_gpus), (8, 64000, 4));
        assert_eq!(parts[2].time_limit, Some(SlurmDuration::from_secs(1800)));
        assert_eq!(parts[0].time_limit, None);
    }

    #[test]
    fn a_request_beyond_the_partition_is_named_field_by_field() {
        let parts = parse_sinfo(SINFO);
        let args = SbatchArgs {
            partition: Some("short".into()),
            cpus_per_task: Some(6),
            mem: Some("16G".into()),
            gres: Some("gpu:1".into()),
            time: Some(SlurmDuration::from_secs(3600)),
            ..SbatchArgs::default()
        };
        assert_eq!(
            exceeds(&parts, &args),
            [
                "asks for 6 CPUs per task; the nodes of partition short have at most 4",
                "asks for 16G of memory; the nodes of partition short have at most 8000 MB",
                "asks for 1 GPUs; the nodes of partition short have at most 0",
                "asks for a time limit of 01:00:00; partition short allows at most 00:30:00",
            ]
        );
        // No partition: the default one; a fitting request says nothing.
        let fits = SbatchArgs {
            cpus_per_task: Some(2),
            mem: Some("4000M".into()),
            ..SbatchArgs::default()
        };
        assert!(exceeds(&parts, &fits).is_empty());
        let unknown = SbatchArgs {
            partition: Some("bigmem".into()),
            ..SbatchArgs::default()
        };
        assert_eq!(
            exceeds(&parts, &unknown),
            ["partition bigmem is not one sinfo lists (debug, gpu, short)"]
        );
    }
}
