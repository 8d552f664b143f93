//! Staging spread across transfer nodes (`stage --shards N`, issue 18): the file list cut
//! into N shards balanced by bytes and by file count, one shard copied into a folder of
//! its own, and the merge that moves the shards' verified files into place.
//!
//! A shard is an ordinary verified copy (`copy::copy_from`) with two settings changed: a
//! filter that takes only the shard's files ([`Filter::only_listed`], asked of the list on
//! disk, never held) and a destination that is not the final one,
//! `DEST/.hpcstage/shards/<i>/`, with its own journal. So a
//! shard that is rerun (requeued after NODE_FAIL or preemption, or rerun by the final
//! task) resumes from its journal, and nothing under a final name is ever unverified: the
//! merge moves only files that the shard's journal lists with the inode it verified, and
//! adds that journal line to the destination's journal. The stage that follows the merge
//! is the normal one, which finds those files verified, copies whatever no shard did,
//! and writes `MANIFEST.sha256` and the stage record.
//!
//! This module submits no job (that is `lifecycle::shards`) and prints nothing. What the
//! shards did stays in `DEST/.hpcstage/shard-jobs/` (the plan, one result per shard, the
//! job scripts and logs) for `status RUN`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use jiff::Timestamp;
use nix::fcntl::Flock;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::copy::{copy_from, CopyOptions, CopyReport};
use crate::error::{Error, IoContext, Result};
use crate::journal::Journal;
use crate::manifest::{escape_into, AtomicFile};
use crate::progress::Progress;
use crate::record::{read_json, write_json};
use crate::sorted::{Cursor, JournalInOrder};
use crate::storage::Storage;
use crate::walk::{self, Entry, Filter, Kind, STATE_DIR};

/// `DEST/.hpcstage/shard-jobs`: the plan, the file lists, one result per shard, the job
/// scripts and their logs. Kept after the merge, for `status`.
pub const JOBS_DIR: &str = "shard-jobs";
/// `DEST/.hpcstage/shards/<i>`: where shard `i` copies to; removed by the merge.
pub const DATA_DIR: &str = "shards";

/// What one file costs a copy besides its bytes (open, create, rename, a journal line,
/// its share of a `syncfs`), in bytes: at about 1 GB/s per stream and a few thousand
/// small files per second, a file weighs like 256 KiB of data.
const FILE_COST: u64 = 256 << 10;

/// The shards of one sharded stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    pub source: String,
    pub shards: Vec<ShardSize>,
    pub planned_at: Timestamp,
}

/// What one shard holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSize {
    pub index: u32,
    pub files: u64,
    pub bytes: u64,
}

/// What one run of a shard did, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardResult {
    pub index: u32,
    /// The node it ran on (`SLURMD_NODENAME`, else this host).
    pub node: String,
    /// Who ran it: `task` (its array task) or `final task` (rerun by the merge).
    pub by: String,
    /// How often SLURM had started it before (`SLURM_RESTART_COUNT`).
    pub restarts: u32,
    pub files: u64,
    pub bytes: u64,
    /// What this run copied (the rest was verified by an earlier run of the shard).
    pub bytes_copied: u64,
    pub started_at: Timestamp,
    pub elapsed_secs: f64,
    /// Every file of the shard verified.
    pub ok: bool,
}

/// Splits files (their sizes, in any order) into `n` shards balanced by bytes and by
/// file count: largest first, each to the shard with the least cost so far, where a file
/// costs its bytes plus [`FILE_COST`]. Returns the indexes of the files of each shard.
pub fn split(sizes: &[u64], n: usize) -> Vec<Vec<usize>> {
    let n = n.max(1);
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
    let mut shards: Vec<Vec<usize>> = vec![Vec::new(); n];
    // (cost, shard): the cheapest shard first; equal costs go to the lower index.
    let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize)>> =
        (0..n).map(|s| std::cmp::Reverse((0, s))).collect();
    for i in order {
        let std::cmp::Reverse((cost, s)) = heap.pop().expect("n >= 1 shards");
        shards[s].push(i);
        heap.push(std::cmp::Reverse((cost + sizes[i] + FILE_COST, s)));
    }
    shards
}

fn state(dest: &Path) -> PathBuf {
    dest.join(STATE_DIR)
}

/// `DEST/.hpcstage/shard-jobs`.
pub fn jobs_dir(dest: &Path) -> PathBuf {
    state(dest).join(JOBS_DIR)
}

/// `DEST/.hpcstage/shards/<index>`.
pub fn data_dir(dest: &Path, index: u32) -> PathBuf {
    state(dest).join(DATA_DIR).join(index.to_string())
}

fn list_path(dest: &Path, index: u32) -> PathBuf {
    jobs_dir(dest).join(format!("{index}.list"))
}

fn result_path(dest: &Path, index: u32) -> PathBuf {
    jobs_dir(dest).join(format!("{index}.json"))
}

fn plan_path(dest: &Path) -> PathBuf {
    jobs_dir(dest).join("plan.json")
}

/// How many of the largest files are placed first, largest first, as [`split`] does; the
/// others, none larger than the smallest of these, then go in path order each to the
/// shard with the least cost so far. So shards balance within that file's cost, and the
/// plan holds this many sizes, not one per file.
const PLACED_FIRST: usize = 4096;

/// Lists the source, leaves out files the destination's journal already has verified
/// from the same source state (the stage after the merge checks them as usual), splits
/// the rest into `shards` and writes the plan and one file list per shard, in path order.
///
/// Memory stays flat in the number of files: a local source is walked in path order and
/// merged with the journal read in the same order; the files still to copy go to a list
/// on disk, read once more to hand each to its shard.
pub fn plan(source: &dyn Storage, dest: &Path, filter: &Filter, shards: u32) -> Result<ShardPlan> {
    if shards == 0 {
        return Err(Error::Invalid {
            what: "number of shards",
            value: "0".into(),
            reason: "give at least 1, e.g. --shards 4".into(),
        });
    }
    source.require_tree()?;
    let dir = jobs_dir(dest);
    std::fs::create_dir_all(&dir).at(&dir)?;
    let mut todo = Todo::new(&dir, PLACED_FIRST)?;
    let mut journal = Cursor::new(JournalInOrder::open(&state(dest).join("journal"))?);
    let mut failure = None;
    let mut one = |e: Entry| {
        if failure.is_some() || e.kind != Kind::File {
            return;
        }
        let known = journal.find(&e.rel).map(|j| {
            j.is_some_and(|(_, j)| j.size == e.meta.size && j.src_mtime_ns == e.meta.mtime_ns)
        });
        match known {
            Ok(true) => {}
            Ok(false) => failure = todo.push(&e.rel, e.meta.size).err(),
            Err(err) => failure = Some(err),
        }
    };
    let mut errors = Vec::new();
    match source.local_root() {
        Some(root) => walk::entries_in_order(root, filter, &mut errors, &mut one)?,
        None => {
            let mut listing = source.list_in_order(filter)?;
            errors.append(&mut listing.errors);
            for e in listing {
                one(e?);
            }
        }
    }
    if let Some(e) = failure.or(errors.into_iter().next()) {
        return Err(e);
    }
    drop(journal);
    let mut plan = ShardPlan {
        source: source.display(Path::new("")).display().to_string(),
        shards: (0..shards)
            .map(|index| ShardSize {
                index,
                files: 0,
                bytes: 0,
            })
            .collect(),
        planned_at: Timestamp::now(),
    };
    todo.deal(&mut plan.shards, |index| list_path(dest, index))?;
    for index in 0..shards {
        let _ = std::fs::remove_file(result_path(dest, index));
    }
    write_json(&plan_path(dest), &plan)?;
    Ok(plan)
}

/// The files a plan still has to copy: their names on disk in path order, the largest
/// [`PLACED_FIRST`] of their sizes in memory.
struct Todo {
    list: std::io::BufWriter<tempfile::NamedTempFile>,
    files: u64,
    /// (size, ordinal) of the largest files so far, the smallest on top.
    largest: BinaryHeap<Reverse<(u64, u64)>>,
    /// How many of them are kept.
    keep: usize,
    line: Vec<u8>,
}

impl Todo {
    fn new(dir: &Path, keep: usize) -> Result<Todo> {
        let list = tempfile::Builder::new()
            .prefix(crate::walk::TMP_PREFIX)
            .tempfile_in(dir)
            .at(dir)?;
        Ok(Todo {
            list: std::io::BufWriter::with_capacity(1 << 20, list),
            files: 0,
            largest: BinaryHeap::with_capacity(keep + 1),
            keep,
            line: Vec::with_capacity(256),
        })
    }

    /// One more file, in path order: `SIZE<TAB>escaped name`.
    fn push(&mut self, rel: &Path, size: u64) -> Result<()> {
        self.line.clear();
        self.line.extend_from_slice(size.to_string().as_bytes());
        self.line.push(b'\t');
        escape_into(&mut self.line, rel.as_os_str().as_bytes());
        self.line.push(b'\n');
        let list = self.list.get_ref().path().to_path_buf();
        self.list.write_all(&self.line).at(list)?;
        self.largest.push(Reverse((size, self.files)));
        if self.largest.len() > self.keep {
            self.largest.pop();
        }
        self.files += 1;
        Ok(())
    }

    /// Hands every file to a shard and writes each shard's list (in path order) to
    /// `list_path(index)`, counting into `shards`.
    fn deal(self, shards: &mut [ShardSize], list_path: impl Fn(u32) -> PathBuf) -> Result<()> {
        let Todo { list, largest, .. } = self;
        let list = list
            .into_inner()
            .map_err(|e| Error::io(std::env::temp_dir(), e.into_error()))?;
        let spill = list.path().to_path_buf();
        // The largest files placed first, as `split` places them.
        let largest: Vec<(u64, u64)> = largest.into_iter().map(|Reverse(f)| f).collect();
        let sizes: Vec<u64> = largest.iter().map(|f| f.0).collect();
        let mut first: HashMap<u64, u32> = HashMap::with_capacity(largest.len());
        let mut cost = vec![0u64; shards.len()];
        for (shard, members) in (0u32..).zip(split(&sizes, shards.len())) {
            for i in members {
                first.insert(largest[i].1, shard);
                cost[shard as usize] += sizes[i] + FILE_COST;
            }
        }
        let mut cheapest: BinaryHeap<Reverse<(u64, u32)>> =
            (0u32..).zip(&cost).map(|(s, &c)| Reverse((c, s))).collect();
        let mut out = shards
            .iter()
            .map(|s| AtomicFile::create(&list_path(s.index)))
            .collect::<Result<Vec<_>>>()?;
        let reader = std::io::BufReader::with_capacity(1 << 20, list.reopen().at(&spill)?);
        for (ordinal, line) in (0u64..).zip(reader.split(b'\n')) {
            let line = line.at(&spill)?;
            let parsed = line.iter().position(|&b| b == b'\t').and_then(|tab| {
                Some((
                    std::str::from_utf8(&line[..tab])
                        .ok()?
                        .parse::<u64>()
                        .ok()?,
                    tab,
                ))
            });
            let Some((size, tab)) = parsed else {
                return Err(Error::Parse {
                    path: spill,
                    reason: format!("line {} is not SIZE<TAB>NAME", ordinal + 1),
                });
            };
            let shard = match first.get(&ordinal) {
                Some(&s) => s,
                None => {
                    let Reverse((c, s)) = cheapest.pop().expect("at least one shard");
                    cheapest.push(Reverse((c + size + FILE_COST, s)));
                    s
                }
            };
            let w = &mut out[shard as usize].out;
            w.write_all(&line[tab + 1..])
                .and_then(|()| w.write_all(b"\n"))
                .at(w.get_ref().path().to_path_buf())?;
            let s = &mut shards[shard as usize];
            s.files += 1;
            s.bytes += size;
        }
        for list in out {
            list.commit()?;
        }
        Ok(())
    }
}

/// The plan of the sharded stage into `dest`.
pub fn read_plan(dest: &Path) -> Result<ShardPlan> {
    read_json(&plan_path(dest))
}

/// The last result of each shard that has one, in shard order.
pub fn results(dest: &Path) -> Vec<ShardResult> {
    let Ok(plan) = read_plan(dest) else {
        return Vec::new();
    };
    plan.shards
        .iter()
        .filter_map(|s| read_json(&result_path(dest, s.index)).ok())
        .collect()
}

/// Copies shard `index` of the plan into `DEST/.hpcstage/shards/<index>` (resuming from
/// its journal) and records what it did; `by` says who ran it.
pub fn copy_shard(
    source: &dyn Storage,
    dest: &Path,
    index: u32,
    by: &str,
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> Result<(CopyReport, ShardResult)> {
    let plan = read_plan(dest)?;
    let Some(size) = plan.shards.iter().find(|s| s.index == index).copied() else {
        return Err(Error::Invalid {
            what: "shard",
            value: index.to_string(),
            reason: format!(
                "the plan in {} has shards 0 to {}",
                plan_path(dest).display(),
                plan.shards.len().saturating_sub(1)
            ),
        });
    };
    let mut opts = opts.clone();
    // The shard's list is asked on disk, not held: 10^7 files in one shard stay flat.
    opts.filter = Filter::only_listed(&list_path(dest, index))?;
    let started_at = Timestamp::now();
    let clock = Instant::now();
    let report = copy_from(source, &data_dir(dest, index), &opts, progress)?;
    opts.filter.check()?;
    let result = ShardResult {
        index,
        node: std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| crate::host::hostname()),
        by: by.to_string(),
        restarts: std::env::var("SLURM_RESTART_COUNT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        files: size.files,
        bytes: size.bytes,
        bytes_copied: report.bytes_copied,
        started_at,
        elapsed_secs: clock.elapsed().as_secs_f64(),
        ok: report.ok() && report.files_total == size.files,
    };
    write_json(&result_path(dest, index), &result)?;
    Ok((report, result))
}

/// What the merge did.
#[derive(Debug, Default)]
pub struct Merged {
    /// Shards the merge copied itself, because their task did not finish them.
    pub rerun: Vec<u32>,
    /// Files moved into place.
    pub moved: u64,
}

/// Takes the destination's lock (the one `stage` and the merge hold), or refuses with
/// who holds it.
pub fn lock(dest: &Path) -> Result<Option<Flock<File>>> {
    let state_dir = state(dest);
    std::fs::create_dir_all(&state_dir).at(&state_dir)?;
    crate::lock::lock_or_refuse(&state_dir.join("lock"), dest)
}

/// Finishes the shards: reruns any whose task did not verify all its files, then moves
/// each shard's verified files into place in `dest` with their journal lines and removes
/// the shard folders. The caller then runs the normal stage, which checks the rest.
pub fn merge(
    source: &dyn Storage,
    dest: &Path,
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> Result<Merged> {
    let plan = read_plan(dest)?;
    let mut merged = Merged::default();
    for s in &plan.shards {
        let done = read_json::<ShardResult>(&result_path(dest, s.index)).is_ok_and(|r| r.ok);
        if !done {
            copy_shard(source, dest, s.index, "final task", opts, progress)?;
            merged.rerun.push(s.index);
        }
    }
    let state_dir = state(dest);
    let _lock = lock(dest)?;
    let mut journal = Journal::open(&state_dir.join("journal"))?;
    for s in &plan.shards {
        let shard = data_dir(dest, s.index);
        merged.moved += move_verified(&shard, dest, &mut journal)?;
        journal.flush()?;
        // A final task requeued after it removed this folder finds it gone.
        match std::fs::remove_dir_all(&shard) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(&shard, e));
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_dir(state_dir.join(DATA_DIR));
    Ok(merged)
}

/// Moves the files of one shard folder that its journal lists as verified (and that
/// are still the inode it verified) to the same relative path under `dest`, and records
/// each in `journal`. Returns how many moved.
fn move_verified(shard: &Path, dest: &Path, journal: &mut Journal) -> Result<u64> {
    // Renames in parallel: on a parallel filesystem one client's renames are a round
    // trip to the metadata server each, and 10^7 of them one after another would take
    // hours. A journal line goes in only for a file that moved; a file that moved but
    // whose line is lost to a crash is "unverified" to the next stage and checked again.
    // The shard's journal is read in path order, a line at a time.
    let journal = std::sync::Mutex::new(journal);
    let moved = std::sync::atomic::AtomicU64::new(0);
    JournalInOrder::open(&shard.join(STATE_DIR).join("journal"))?
        .par_bridge()
        .try_for_each(|line| {
            let (rel, entry) = line?;
            let from = shard.join(&rel);
            let same = std::fs::symlink_metadata(&from)
                .is_ok_and(|m| m.is_file() && m.ino() == entry.dest_ino && m.len() == entry.size);
            if !same {
                return Ok(());
            }
            let to = dest.join(&rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).at(parent)?;
            }
            std::fs::rename(&from, &to).at(&to)?;
            moved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            journal
                .lock()
                .expect("no thread panics holding the journal")
                .record(&rel, entry)
        })?;
    Ok(moved.into_inner())
}

/// One line on what a run of a shard did, as `status` prints it.
pub fn describe(result: &ShardResult) -> String {
    let who = match (result.by.as_str(), result.restarts) {
        ("task", 0) => String::new(),
        ("task", 1) => " (after 1 requeue)".to_string(),
        ("task", n) => format!(" (after {n} requeues)"),
        (by, _) => format!(" (rerun by the {by})"),
    };
    format!(
        "shard {}: {} on {}, {}, {} in {:.1} s{who}",
        result.index,
        if result.ok { "verified" } else { "INCOMPLETE" },
        result.node,
        crate::human::count(result.files, "file"),
        crate::human::bytes(result.bytes),
        result.elapsed_secs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::journal::JournalEntry;

    /// The journal at `path` as a map, the latest line of a path winning.
    fn journal_entries(path: &Path) -> Result<HashMap<PathBuf, JournalEntry>> {
        JournalInOrder::open(path)?.collect()
    }

    fn totals(sizes: &[u64], shards: &[Vec<usize>]) -> Vec<(usize, u64)> {
        shards
            .iter()
            .map(|s| (s.len(), s.iter().map(|&i| sizes[i]).sum()))
            .collect()
    }

    #[test]
    fn equal_files_split_into_counts_that_differ_by_at_most_one() {
        let sizes = vec![1000; 10];
        let t = totals(&sizes, &split(&sizes, 3));
        assert_eq!(t, vec![(4, 4000), (3, 3000), (3, 3000)]);
    }

    #[test]
    fn every_file_lands_in_exactly_one_shard() {
        let sizes: Vec<u64> = (0..1000).map(|i| (i * 7919) % 100_000).collect();
        let shards = split(&sizes, 7);
        let mut all: Vec<usize> = shards.concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn mixed_sizes_balance_bytes_within_the_largest_file() {
        // A few big files and many small ones.
        let mut sizes: Vec<u64> = vec![900 << 20, 700 << 20, 500 << 20, 300 << 20];
        sizes.extend((0..4000).map(|i| 1000 + (i % 50) * 100));
        let t = totals(&sizes, &split(&sizes, 4));
        let cost = |(n, b): (usize, u64)| b + n as u64 * FILE_COST;
        let (lo, hi) = (
            t.iter().copied().map(cost).min().unwrap(),
            t.iter().copied().map(cost).max().unwrap(),
        );
        assert!(hi - lo <= 900 << 20, "{t:?}");
        // Byte totals all within the largest file of each other: no shard is left
        // with only small files while another holds every big one.
        let bytes: Vec<u64> = t.iter().map(|x| x.1).collect();
        assert!(
            bytes.iter().max().unwrap() - bytes.iter().min().unwrap() <= 900 << 20,
            "{t:?}"
        );
    }

    #[test]
    fn many_small_files_balance_by_count() {
        let sizes: Vec<u64> = (0..10_001).map(|i| 100 + i % 3).collect();
        let t = totals(&sizes, &split(&sizes, 4));
        let counts: Vec<usize> = t.iter().map(|x| x.0).collect();
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{t:?}"
        );
    }

    #[test]
    fn one_huge_file_takes_a_shard_of_its_own_and_the_small_ones_go_elsewhere() {
        let mut sizes = vec![10u64 << 30];
        sizes.extend(std::iter::repeat_n(1 << 20, 100));
        let shards = split(&sizes, 3);
        let t = totals(&sizes, &shards);
        assert_eq!(shards[0], vec![0], "{t:?}");
        assert_eq!(t[1].0 + t[2].0, 100);
        assert!(t[1].0.abs_diff(t[2].0) <= 1, "{t:?}");
    }

    #[test]
    fn the_merge_reruns_a_shard_its_task_never_finished_and_moves_only_verified_files() {
        use crate::progress::NoProgress;
        use crate::storage::LocalDir;
        let dir = tempfile::tempdir().unwrap();
        let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
        for i in 0..20u32 {
            let path = src.join(format!("d{}/f{i}", i % 3));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, vec![i as u8; 1000 * i as usize]).unwrap();
        }
        let store = LocalDir::new(&src);
        let plan = plan(&store, &dest, &Filter::default(), 3).unwrap();
        assert_eq!(plan.shards.iter().map(|s| s.files).sum::<u64>(), 20);
        // Shard 0 ran; shard 1 was killed before it verified anything but left a stray
        // file that no journal vouches for; shard 2 never started.
        let opts = CopyOptions::default();
        let (_, r0) = copy_shard(&store, &dest, 0, "task", &opts, &NoProgress).unwrap();
        assert!(r0.ok);
        let stray = data_dir(&dest, 1).join("d0/f0");
        std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
        std::fs::write(&stray, b"not verified").unwrap();

        let merged = merge(&store, &dest, &opts, &NoProgress).unwrap();
        assert_eq!(merged.rerun, vec![1, 2]);
        assert_eq!(merged.moved, 20);
        // A final task that is requeued after it finished merges again without harm.
        let again = merge(&store, &dest, &opts, &NoProgress).unwrap();
        assert!(again.rerun.is_empty() && again.moved == 0, "{again:?}");
        assert!(!state(&dest).join(DATA_DIR).exists());
        let journal = journal_entries(&state(&dest).join("journal")).unwrap();
        assert_eq!(journal.len(), 20);
        for i in 0..20u32 {
            let rel = PathBuf::from(format!("d{}/f{i}", i % 3));
            assert_eq!(
                std::fs::read(dest.join(&rel)).unwrap(),
                vec![i as u8; 1000 * i as usize]
            );
            let ino = std::fs::metadata(dest.join(&rel)).unwrap().ino();
            assert_eq!(journal[&rel].dest_ino, ino, "{}", rel.display());
        }
        let results = results(&dest);
        let by: Vec<&str> = results.iter().map(|r| r.by.as_str()).collect();
        assert_eq!(by, ["task", "final task", "final task"]);
    }

    /// Deals `sizes` (in path order `f00000`, `f00001`, ...) into `n` shards, placing the
    /// `keep` largest first; returns each shard's files as (ordinal, size), as listed.
    fn deal(sizes: &[u64], n: u32, keep: usize) -> (Vec<ShardSize>, Vec<Vec<(usize, u64)>>) {
        let dir = tempfile::tempdir().unwrap();
        let mut todo = Todo::new(dir.path(), keep).unwrap();
        for (i, &size) in sizes.iter().enumerate() {
            todo.push(Path::new(&format!("f{i:05}")), size).unwrap();
        }
        let mut shards: Vec<ShardSize> = (0..n)
            .map(|index| ShardSize {
                index,
                files: 0,
                bytes: 0,
            })
            .collect();
        let list = |i: u32| dir.path().join(format!("{i}.list"));
        todo.deal(&mut shards, list).unwrap();
        let lists = (0..n)
            .map(|i| {
                std::fs::read_to_string(list(i))
                    .unwrap()
                    .lines()
                    .map(|l| {
                        let i: usize = l.strip_prefix('f').unwrap().parse().unwrap();
                        (i, sizes[i])
                    })
                    .collect()
            })
            .collect();
        (shards, lists)
    }

    #[test]
    fn a_dealt_plan_lists_every_file_once_in_path_order_and_counts_it() {
        let sizes: Vec<u64> = (0..500).map(|i| (i * 7919) % 100_000).collect();
        let (shards, lists) = deal(&sizes, 4, 16);
        let mut all: Vec<usize> = Vec::new();
        for (s, list) in shards.iter().zip(&lists) {
            assert!(list.windows(2).all(|w| w[0].0 < w[1].0), "{list:?}");
            assert_eq!(s.files, list.len() as u64);
            assert_eq!(s.bytes, list.iter().map(|f| f.1).sum::<u64>());
            all.extend(list.iter().map(|f| f.0));
        }
        all.sort_unstable();
        assert_eq!(all, (0..500).collect::<Vec<_>>());
    }

    #[test]
    fn the_largest_files_are_placed_first_even_when_they_come_last_in_path_order() {
        // 300 small files, then one that outweighs them all: with only the 4 largest
        // held, the big one still gets a shard of its own.
        let mut sizes = vec![1u64 << 20; 300];
        sizes.push(10 << 30);
        let (shards, lists) = deal(&sizes, 3, 4);
        let big = lists
            .iter()
            .position(|l| l.iter().any(|f| f.0 == 300))
            .unwrap();
        assert_eq!(lists[big], vec![(300, 10 << 30)], "{shards:?}");
        let others: Vec<u64> = (0..3)
            .filter(|&i| i != big)
            .map(|i| shards[i].files)
            .collect();
        assert_eq!(others.iter().sum::<u64>(), 300);
        assert!(others[0].abs_diff(others[1]) <= 1, "{shards:?}");
    }

    #[test]
    fn dealt_shards_balance_within_the_largest_file_not_held() {
        let sizes: Vec<u64> = (0..2000).map(|i| 1000 + (i * 31 % 97) * 5000).collect();
        let (shards, _) = deal(&sizes, 5, 10);
        let cost: Vec<u64> = shards
            .iter()
            .map(|s| s.bytes + s.files * FILE_COST)
            .collect();
        let spread = cost.iter().max().unwrap() - cost.iter().min().unwrap();
        let largest = *sizes.iter().max().unwrap() + FILE_COST;
        assert!(spread <= largest, "{shards:?}");
    }

    #[test]
    fn more_shards_than_files_leaves_some_empty() {
        let t = totals(&[5, 6], &split(&[5, 6], 4));
        assert_eq!(t.iter().filter(|x| x.0 == 0).count(), 2);
        assert_eq!(t.iter().map(|x| x.1).sum::<u64>(), 11);
    }
}
