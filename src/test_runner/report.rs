//! Boot timelines: per node, launch → PID 1 exec → READY=1 → each unit the
//! script waited for; printed, and drawn as an SVG with one row per node
//! (as `systemd-analyze plot` draws one boot).

use std::fmt::Write as _;

use super::node::Mark;

/// The timelines as text, times relative to the earliest launch.
pub fn text(rows: &[(String, Vec<Mark>)]) -> String {
    let Some(origin) = origin(rows) else {
        return String::new();
    };
    let mut s = String::new();
    for (name, marks) in rows {
        let parts: Vec<String> = marks
            .iter()
            .map(|m| format!("{} +{:.3}s", m.label, secs(m.at, origin)))
            .collect();
        let _ = writeln!(s, "{name}: {}", parts.join(" → "));
    }
    s
}

fn origin(rows: &[(String, Vec<Mark>)]) -> Option<u64> {
    rows.iter().flat_map(|(_, m)| m.iter().map(|m| m.at)).min()
}

fn secs(at: u64, origin: u64) -> f64 {
    at.saturating_sub(origin) as f64 / 1e6
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One row per node: a bar from launch to PID 1 exec (setup), one from
/// there to READY=1 (boot), a tick and label for every unit waited for.
pub fn svg(rows: &[(String, Vec<Mark>)]) -> String {
    let origin = origin(rows).unwrap_or(0);
    let end = rows
        .iter()
        .flat_map(|(_, m)| m.iter().map(|m| secs(m.at, origin)))
        .fold(0.1f64, f64::max);
    let (left, width, row_h) = (140.0, 900.0, 34.0);
    let scale = width / end;
    let height = 50.0 + row_h * rows.len() as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="11">"#,
        left + width + 220.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    // A grid line per tenth of the run.
    for i in 0..=10 {
        let t = end * f64::from(i) / 10.0;
        let x = left + t * scale;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="20" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="14" text-anchor="middle">{t:.2}s</text>"##,
            height - 10.0
        );
    }
    for (i, (name, marks)) in rows.iter().enumerate() {
        let y = 30.0 + row_h * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="4" y="{:.1}">{}</text>"#,
            y + 14.0,
            escape(name)
        );
        let find = |prefix: &str| marks.iter().find(|m| m.label.starts_with(prefix));
        let bar = |s: &mut String, a: Option<&Mark>, b: Option<&Mark>, color: &str, what: &str| {
            if let (Some(a), Some(b)) = (a, b) {
                let x = left + secs(a.at, origin) * scale;
                let w = ((b.at.saturating_sub(a.at)) as f64 / 1e6 * scale).max(1.0);
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="18" fill="{color}"><title>{what}: {:.3}s</title></rect>"#,
                    (b.at.saturating_sub(a.at)) as f64 / 1e6
                );
            }
        };
        bar(
            &mut s,
            find("launch"),
            find("PID 1 exec"),
            "#f0a050",
            "setup",
        );
        bar(
            &mut s,
            find("PID 1 exec"),
            find("READY=1"),
            "#5090e0",
            "boot",
        );
        for m in marks.iter().filter(|m| {
            !["launch", "PID 1 exec", "READY=1"]
                .iter()
                .any(|p| m.label.starts_with(p))
        }) {
            let x = left + secs(m.at, origin) * scale;
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{y:.1}" x2="{x:.1}" y2="{:.1}" stroke="#208020" stroke-width="2"/><text x="{:.1}" y="{:.1}" fill="#208020">{} +{:.3}s</text>"##,
                y + 18.0,
                x + 3.0,
                y + 29.0,
                escape(&m.label),
                secs(m.at, origin)
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="4" y="{:.1}" fill="#666">orange: launch → PID 1 exec; blue: PID 1 exec → READY=1; green: units waited for</text>"##,
        height - 2.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timelines_are_relative_to_the_first_launch() {
        let m = |l: &str, at| Mark {
            label: l.into(),
            at,
        };
        let rows = vec![
            (
                "a".to_owned(),
                vec![
                    m("launch", 1_000_000),
                    m("PID 1 exec", 1_050_000),
                    m("READY=1", 1_400_000),
                ],
            ),
            (
                "b<".to_owned(),
                vec![m("launch", 1_010_000), m("x.service", 2_000_000)],
            ),
        ];
        let t = text(&rows);
        assert!(
            t.contains("a: launch +0.000s → PID 1 exec +0.050s → READY=1 +0.400s"),
            "{t}"
        );
        assert!(t.contains("b<: launch +0.010s → x.service +1.000s"), "{t}");
        let svg = svg(&rows);
        assert!(
            svg.starts_with("<svg") && svg.contains("b&lt;") && svg.contains("<title>boot: 0.350s")
        );
    }
}
