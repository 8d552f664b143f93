//! Numbers and words as people read them (sizes, counts with their noun, shell-quoted
//! paths), shared by error messages, records and the binary. Named `human`, not `fmt`,
//! so that it never shadows `std::fmt`.

/// Formats a byte count with binary units, e.g. `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `n` and the noun, plural unless `n` is 1: `1 file`, `3 files`, `2 entries`.
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        return format!("1 {noun}");
    }
    match noun.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'o', 'u']) => format!("{n} {stem}ies"),
        _ => format!("{n} {noun}s"),
    }
}

/// Quotes a word for bash (single quotes where needed).
pub fn shell_quote(s: &str) -> String {
    shlex::try_quote(s).map_or_else(|_| "''".to_string(), |q| q.into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(super::bytes(0), "0 B");
        assert_eq!(super::bytes(1023), "1023 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn counts_say_one_item_and_two_items() {
        assert_eq!(super::count(1u64, "item"), "1 item");
        assert_eq!(super::count(0u64, "item"), "0 items");
        assert_eq!(super::count(2u64, "symlink"), "2 symlinks");
        assert_eq!(super::count(2u64, "entry"), "2 entries");
        assert_eq!(super::count(2u64, "day"), "2 days");
    }
}
