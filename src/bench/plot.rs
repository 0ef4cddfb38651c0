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

/// The decode row of `model` at `depth` with the largest batch it measured there (under
/// `--batch max`, each preset's own largest batch).
fn decode_row<'a>(rows: &'a [BenchRow], model: &str, depth: usize) -> Option<&'a BenchRow> {
    rows.iter()
        .filter(|r| r.model == model && r.depth == depth && r.test.starts_with("tg"))
        .max_by_key(|r| r.batch)
}

/// Both panels side by side. Decode figures use each preset's largest measured batch at each
/// depth.
pub fn svg(rows: &[BenchRow]) -> String {
    let names = models(rows);
    let mut depths: Vec<usize> = rows.iter().map(|r| r.depth).collect();
    depths.sort_unstable();
    depths.dedup();
    let decode: Vec<&BenchRow> = names
        .iter()
        .flat_map(|n| depths.iter().filter_map(|&d| decode_row(rows, n, d)))
        .collect();
    let mut batches: Vec<usize> = decode.iter().map(|r| r.batch).collect();
    batches.sort_unstable();
    batches.dedup();
    let decode_title = match batches[..] {
        [batch] => format!("decode tokens/s (batch {batch})"),
        _ => "decode tokens/s (each preset's largest batch)".to_string(),
    };
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
        (0.0, decode_title),
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
        let points: Vec<(f64, f64, &BenchRow)> = depths
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                decode_row(rows, name, *d).map(|r| (x_of(i, 0.0), y_of(r.tokens_per_s, max_tps), r))
            })
            .collect();
        let line: Vec<String> = points
            .iter()
            .map(|(x, y, _)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            line.join(" ")
        );
        // A marker and the value at each point, so that a single depth still shows.
        for (x, y, r) in &points {
            let _ = write!(
                s,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/><text x="{:.1}" y="{:.1}">{:.0} (b{})</text>"#,
                x + 5.0,
                y - 5.0,
                r.tokens_per_s,
                r.batch
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, test: &str, batch: usize, depth: usize, tps: f64) -> BenchRow {
        BenchRow {
            model: model.into(),
            kv_cache_dtype: "f32",
            test: test.into(),
            batch,
            at_max: false,
            depth,
            tokens_per_s: tps,
            std: 0.0,
            kv_bytes_per_token: 1,
            max_batch: batch as u64,
            attention_share: 0.0,
            ffn_share: 0.0,
            other_share: 0.0,
            graphs_per_step: None,
            launches_per_step: None,
            waits_per_step: None,
            roofline: None,
        }
    }

    #[test]
    fn each_preset_is_drawn_at_its_own_largest_batch() {
        let rows = [
            row("mla", "tg16", 126, 16384, 908.0),
            row("mla", "tg16", 1, 16384, 50.0),
            row("mha", "tg16", 17, 16384, 187.0),
            row("mha", "pp512", 17, 16384, 9999.0),
        ];
        let svg = svg(&rows);
        assert!(
            svg.contains("908 (b126)") && svg.contains("187 (b17)"),
            "{svg}"
        );
        assert!(!svg.contains("(b1)") && !svg.contains("9999"), "{svg}");
        assert!(svg.contains("each preset's largest batch"));
        assert_eq!(svg.matches("<circle").count(), 2);
    }
}
