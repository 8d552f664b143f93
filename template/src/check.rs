//! Validators for resource values (from a spec's expressions or the command line); each
//! returns the normalized value or a reason. Nothing they let through can break out of a
//! `#SBATCH` line or an `sbatch` argument.

use hpcstage_slurm::duration::SlurmDuration;
use hpcstage_slurm::sbatch::ArraySpec;

fn charset(value: &str, extra: &[u8], what: &str) -> Result<String, String> {
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{what} may contain only letters, digits and {}",
            String::from_utf8_lossy(extra)
        ))
    }
}

/// Partition, account or QOS names (a partition may be a comma list).
pub(crate) fn name_list(value: &str) -> Result<String, String> {
    charset(value, b"_.-,", "a name")
}

/// `gpu:1`, `gpu:a100:2`, `gpu:1,shard:2`.
pub(crate) fn gres(value: &str) -> Result<String, String> {
    let ok = value.split(',').all(|item| {
        let mut parts = item.split(':');
        let name_ok = parts.next().is_some_and(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'/'))
        });
        name_ok
            && parts.all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            })
    });
    if ok {
        Ok(value.to_string())
    } else {
        Err("expected NAME[:TYPE][:COUNT], comma-separated (gpu:1)".to_string())
    }
}

pub(crate) fn cpus(value: &str) -> Result<u32, String> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| "expected a whole number of CPUs, at least 1".to_string())
}

/// `16G`, `500M`, `64000` (megabytes); the unit is upper-cased.
pub(crate) fn mem(value: &str) -> Result<String, String> {
    let v = value.trim();
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let unit = &v[digits..];
    if digits == 0 || !matches!(unit, "" | "K" | "M" | "G" | "T" | "k" | "m" | "g" | "t") {
        return Err("expected a number with an optional unit K, M, G or T (16G)".to_string());
    }
    Ok(v.to_ascii_uppercase())
}

pub(crate) fn time(value: &str) -> Result<SlurmDuration, String> {
    let d = SlurmDuration::parse(value).map_err(|e| e.to_string())?;
    if d.as_secs() == 0 {
        return Err("a time limit must be longer than zero".to_string());
    }
    Ok(d)
}

pub(crate) fn constraint(value: &str) -> Result<String, String> {
    charset(value, b"_.,&|!*[]()-:", "a constraint")
}

pub(crate) fn array(value: &str) -> Result<ArraySpec, String> {
    ArraySpec::parse(value)
}

#[cfg(test)]
mod tests {
    use super as check;

    #[test]
    fn resource_checks() {
        assert_eq!(check::mem("16g").unwrap(), "16G");
        assert!(check::mem("16 GB").is_err());
        assert!(check::gres("gpu:a100:2,shard:1").is_ok());
        assert!(check::gres("gpu:1\n#SBATCH --x").is_err());
        assert!(check::name_list("gpu,debug").is_ok());
        assert!(check::name_list("gpu debug").is_err());
        assert_eq!(check::cpus("4").unwrap(), 4);
        assert!(check::cpus("0").is_err());
        assert!(check::time("0s").is_err());
    }
}
