//! etcdctl's output forms: its ASCII tables and its human-readable sizes.

/// A table as etcdctl draws it: centered headers, right-aligned cells.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| rows.iter().map(|r| r[i].len()).chain([h.len()]).max().unwrap_or(0))
        .collect();
    let rule: String = widths.iter().map(|w| format!("+{}", "-".repeat(w + 2))).collect::<String>() + "+\n";
    let line = |cells: Vec<String>| cells.iter().map(|c| format!("| {c} ")).collect::<String>() + "|\n";
    let header = line(
        headers
            .iter()
            .zip(&widths)
            .map(|(h, w)| {
                let left = (w - h.len()) / 2;
                format!("{}{h}{}", " ".repeat(left), " ".repeat(w - h.len() - left))
            })
            .collect(),
    );
    let mut out = format!("{rule}{header}{rule}");
    for row in rows {
        out += &line(row.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect());
    }
    out + &rule
}

/// Sizes in SI units with etcdctl's rounding: "8.2 kB", "25 MB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let exp = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    if exp == 0 {
        return format!("{n} B");
    }
    let value = n as f64 / 1000f64.powi(exp as i32);
    let unit = UNITS[(exp - 1).min(UNITS.len() - 1)];
    if value < 10.0 {
        format!("{:.1} {unit}", (value * 10.0).round() / 10.0)
    } else {
        format!("{:.0} {unit}", value.round())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_tables_look_like_etcdctl() {
        assert_eq!(human_bytes(8192), "8.2 kB");
        assert_eq!(human_bytes(25_000), "25 kB");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(2_100_000), "2.1 MB");
        let t = table(&["ID", "STATUS"], &[vec!["487554137cca34c1".into(), "started".into()]]);
        assert_eq!(
            t,
            "+------------------+---------+\n\
             |        ID        | STATUS  |\n\
             +------------------+---------+\n\
             | 487554137cca34c1 | started |\n\
             +------------------+---------+\n"
        );
    }
}
