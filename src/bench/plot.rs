//! `mla bench --plot FILE.svg`: decode tokens/s against context depth, and the largest batch
//! whose caches fit memory at each depth, one colour per preset. Plain SVG, no dependencies.

use super::BenchRow;
use std::fmt::Write;

const COLOURS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];
const W: f64 = 460.0;
const H: f64 = 320.0;
const PAD: f64 = 50.0;

fn models(rows: &[BenchRow]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        if !names.contains(&r.model) {
            names.push(r.model.clone());
        }
    }
    names
}

/// Both panels side by side. Decode figures use each preset's largest measured batch.
pub fn svg(rows: &[BenchRow]) -> String {
    let names = models(rows);
    let mut depths: Vec<usize> = rows.iter().map(|r| r.depth).collect();
    depths.sort_unstable();
    depths.dedup();
    let batch = rows.iter().map(|r| r.batch).max().unwrap_or(1);
    let decode: Vec<&BenchRow> = rows
        .iter()
        .filter(|r| r.test.starts_with("tg") && r.batch == batch)
        .collect();
    let x_of = |i: usize, x0: f64| {
        x0 + PAD + (i as f64 + 0.5) * (W - 2.0 * PAD) / depths.len().max(1) as f64
    };
    let y_of = |v: f64, max: f64| H - PAD - v / max.max(1e-9) * (H - 2.0 * PAD);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        2.0 * W,
        H + 20.0 * names.len() as f64
    );
    for (x0, title) in [
        (0.0, format!("decode tokens/s (batch {batch})")),
        (W, "max batch that fits the KV cache budget".to_string()),
    ] {
        let _ = write!(
            s,
            r#"<text x="{}" y="20" font-size="13">{title}</text>"#,
            x0 + PAD
        );
        let _ = write!(
            s,
            r#"<line x1="{a}" y1="{b}" x2="{c}" y2="{b}" stroke="black"/><line x1="{a}" y1="{d}" x2="{a}" y2="{b}" stroke="black"/>"#,
            a = x0 + PAD,
            b = H - PAD,
            c = x0 + W - PAD,
            d = PAD
        );
        for (i, d) in depths.iter().enumerate() {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{d}</text>"#,
                x_of(i, x0),
                H - PAD + 15.0
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">context depth (tokens)</text>"#,
            x0 + W / 2.0,
            H - 12.0
        );
    }
    let max_tps = decode.iter().map(|r| r.tokens_per_s).fold(0.0, f64::max);
    let max_batch = rows.iter().map(|r| r.max_batch as f64).fold(0.0, f64::max);
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text>"#,
        PAD - 4.0,
        PAD + 4.0,
        max_tps
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text>"#,
        W + PAD - 4.0,
        PAD + 4.0,
        max_batch
    );
    let bar = (W - 2.0 * PAD) / depths.len().max(1) as f64 / (names.len() as f64 + 1.0);
    for (m, name) in names.iter().enumerate() {
        let colour = COLOURS[m % COLOURS.len()];
        let points: Vec<String> = depths
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                decode
                    .iter()
                    .find(|r| &r.model == name && r.depth == *d)
                    .map(|r| format!("{:.1},{:.1}", x_of(i, 0.0), y_of(r.tokens_per_s, max_tps)))
            })
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for (i, d) in depths.iter().enumerate() {
            if let Some(r) = rows.iter().find(|r| &r.model == name && r.depth == *d) {
                let x = x_of(i, W) - bar * names.len() as f64 / 2.0 + bar * m as f64;
                let y = y_of(r.max_batch as f64, max_batch);
                let _ = write!(
                    s,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{colour}"/>"#,
                    bar * 0.9,
                    H - PAD - y
                );
            }
        }
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}">{name}</text>"#,
            PAD,
            H + 20.0 * m as f64,
            PAD + 15.0,
            H + 9.0 + 20.0 * m as f64
        );
    }
    s.push_str("</svg>\n");
    s
}
