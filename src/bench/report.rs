//! Bench tables: markdown, JSON or CSV, and MLA-vs-MHA ratios side by side.

use super::BenchRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Md,
    Json,
    Csv,
}

/// The first row's model (its first (preset, cache dtype) pair) against each other model, for
/// the same test, batch and depth.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Comparison {
    pub test: String,
    /// The batch, or `max (B vs B')` when each model ran its largest batch.
    pub batch: String,
    pub depth: usize,
    pub baseline: String,
    pub other: String,
    /// baseline tokens/s ÷ other tokens/s.
    pub speed_ratio: f64,
    /// other KV bytes per token ÷ baseline's.
    pub kv_ratio: f64,
    /// baseline max batch ÷ other's.
    pub max_batch_ratio: f64,
}

pub fn compare(rows: &[BenchRow]) -> Vec<Comparison> {
    let Some(baseline) = rows.first().map(|r| r.model.clone()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for b in rows.iter().filter(|r| r.model == baseline) {
        for o in rows.iter().filter(|r| {
            r.model != baseline
                && r.test == b.test
                && r.depth == b.depth
                && if b.at_max {
                    r.at_max
                } else {
                    !r.at_max && r.batch == b.batch
                }
        }) {
            out.push(Comparison {
                test: b.test.clone(),
                batch: if b.at_max {
                    format!("max ({} vs {})", b.batch, o.batch)
                } else {
                    b.batch.to_string()
                },
                depth: b.depth,
                baseline: baseline.clone(),
                other: o.model.clone(),
                speed_ratio: b.tokens_per_s / o.tokens_per_s,
                kv_ratio: o.kv_bytes_per_token as f64 / b.kv_bytes_per_token as f64,
                max_batch_ratio: b.max_batch as f64 / o.max_batch.max(1) as f64,
            });
        }
    }
    out
}

fn test_label(r: &BenchRow) -> String {
    if r.depth == 0 {
        r.test.clone()
    } else {
        format!("{} @ d{}", r.test, r.depth)
    }
}

pub fn render(rows: &[BenchRow], comparisons: Option<&[Comparison]>, format: Format) -> String {
    match format {
        Format::Json => {
            serde_json::json!({"rows": rows, "compare": comparisons}).to_string() + "\n"
        }
        Format::Csv => {
            let mut s = String::from(
                "model,test,batch,depth,tokens_per_s,std,kv_bytes_per_token,max_batch,attention_share,ffn_share,other_share,graphs_per_step,launches_per_step,waits_per_step,roofline,kv_cache_dtype\n",
            );
            for r in rows {
                s += &format!(
                    "{},{},{},{},{:.3},{:.3},{},{},{:.4},{:.4},{:.4},{},{},{},{},{}\n",
                    r.model,
                    r.test,
                    r.batch,
                    r.depth,
                    r.tokens_per_s,
                    r.std,
                    r.kv_bytes_per_token,
                    r.max_batch,
                    r.attention_share,
                    r.ffn_share,
                    r.other_share,
                    r.graphs_per_step
                        .map_or(String::new(), |v| format!("{v:.2}")),
                    r.launches_per_step
                        .map_or(String::new(), |v| format!("{v:.1}")),
                    r.waits_per_step
                        .map_or(String::new(), |v| format!("{v:.1}")),
                    r.roofline.map_or(String::new(), |v| format!("{v:.3}")),
                    r.kv_cache_dtype
                );
            }
            s
        }
        Format::Md => {
            let mut s = String::from(
                "| model | test | batch | t/s | KV bytes/token | max batch | attention / MoE+MLP / other | graphs / launches / waits per step | of roofline |\n|---|---|---:|---:|---:|---:|---|---|---:|\n",
            );
            for r in rows {
                s += &format!(
                    "| {} | {} | {} | {:.2} ± {:.2} | {} | {} | {:.0}% / {:.0}% / {:.0}% | {} | {} |\n",
                    r.model,
                    test_label(r),
                    if r.at_max {
                        format!("{} (max)", r.batch)
                    } else {
                        r.batch.to_string()
                    },
                    r.tokens_per_s,
                    r.std,
                    r.kv_bytes_per_token,
                    r.max_batch,
                    r.attention_share * 100.0,
                    r.ffn_share * 100.0,
                    r.other_share * 100.0,
                    match (r.graphs_per_step, r.launches_per_step, r.waits_per_step) {
                        (Some(g), Some(l), Some(w)) => format!("{g:.2} / {l:.1} / {w:.1}"),
                        _ => String::new(),
                    },
                    r.roofline.map_or(String::new(), |v| format!("{v:.2}"))
                );
            }
            if let Some(cmp) = comparisons.filter(|c| !c.is_empty()) {
                s += "\n| test | batch | models | speed ratio | KV bytes ratio | max batch ratio |\n|---|---:|---|---:|---:|---:|\n";
                for c in cmp {
                    let label = if c.depth == 0 {
                        c.test.clone()
                    } else {
                        format!("{} @ d{}", c.test, c.depth)
                    };
                    s += &format!(
                        "| {label} | {} | {} vs {} | {:.2}× | {:.2}× | {:.2}× |\n",
                        c.batch, c.baseline, c.other, c.speed_ratio, c.kv_ratio, c.max_batch_ratio
                    );
                }
            }
            s
        }
    }
}
