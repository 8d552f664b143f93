//! From judged items to the report: the whole-folder purge rule applied across items,
//! then the filter, the order (most urgent first within each project and owner) and the
//! totals.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use hpcstage_staging::policy::{days_left, format_age, PurgePolicy};

use super::{Filter, Item, Report, Safety, Totals};

/// On a site that deletes a whole top-level folder of scratch once any file in it
/// qualifies, every item under the same top-level folder goes with the earliest of them:
/// each takes the earliest deadline of its folder, and its reason names the item that set it.
pub fn apply_whole_folder(items: &mut [Item], scratch_root: &Path, now: Timestamp) {
    use std::collections::HashMap;
    let top = |p: &Path| -> Option<PathBuf> {
        let rel = p.strip_prefix(scratch_root).ok()?;
        rel.components()
            .next()
            .map(|c| scratch_root.join(c.as_os_str()))
    };
    let mut earliest: HashMap<PathBuf, (Timestamp, String)> = HashMap::new();
    // A folder already gone sets no deadline for the others.
    for i in items.iter().filter(|i| i.present()) {
        if let Some(t) = top(&i.path) {
            let e = earliest.entry(t).or_insert((i.deadline, i.name.clone()));
            if i.deadline < e.0 {
                *e = (i.deadline, i.name.clone());
            }
        }
    }
    for i in items.iter_mut().filter(|i| i.present()) {
        let Some(t) = top(&i.path) else { continue };
        let Some((deadline, by)) = earliest.get(&t) else {
            continue;
        };
        if *deadline < i.deadline {
            i.deadline = *deadline;
            i.days_left = days_left(*deadline, now);
            i.reason = format!(
                "{}; the site purges all of {} with {by}",
                i.reason,
                t.display()
            );
            if i.deadline <= now && i.safety == Safety::Safe {
                i.safety = Safety::Expired;
            }
        }
    }
}

/// Orders, filters and totals items into a report.
pub fn build(
    mut items: Vec<Item>,
    filter: &Filter,
    policy: &PurgePolicy,
    now: Timestamp,
) -> Report {
    let mut seen = HashSet::new();
    items.retain(|i| seen.insert(i.path.clone()));
    items.retain(|i| {
        filter.owner.as_ref().is_none_or(|o| &i.owner == o)
            && filter.project.as_ref().is_none_or(|p| &i.project == p)
            && filter.within.is_none_or(|w| {
                let limit = now
                    .checked_add(
                        jiff::SignedDuration::try_from(w).unwrap_or(jiff::SignedDuration::MAX),
                    )
                    .unwrap_or(Timestamp::MAX);
                // What may be the only copy shows whatever its deadline.
                i.deadline <= limit || i.safety == Safety::AtRisk
            })
    });
    items.sort_by(|a, b| {
        (&a.project, &a.owner, a.safety, a.deadline, &a.name)
            .cmp(&(&b.project, &b.owner, b.safety, b.deadline, &b.name))
    });
    let mut totals = Totals {
        items: items.len(),
        ..Totals::default()
    };
    for i in &items {
        totals.bytes += i.bytes;
        totals.files += i.files;
        match i.safety {
            Safety::AtRisk => {
                totals.at_risk += 1;
                totals.at_risk_bytes += i.bytes;
            }
            Safety::Incomplete => totals.incomplete += 1,
            Safety::InUse => totals.in_use += 1,
            Safety::Expired => totals.expired += 1,
            Safety::PartlyPurged => totals.partly_purged += 1,
            Safety::Partial | Safety::Dismissed | Safety::Safe | Safety::Cleaned => {}
        }
    }
    Report {
        generated_at: now,
        policy_basis: policy.basis,
        policy_age: format_age(policy.age),
        policy_whole_folder: policy.whole_folder,
        within_days: filter.within.map(|w| w.as_secs() / 86_400),
        items,
        totals,
    }
}
