//! `mla bench`: llama-bench-style prefill and decode throughput of random-weight presets, with
//! KV cache bytes per token and the largest batch that fits a memory budget at each depth.

pub mod attention;
pub mod gemm;
pub mod http_client;
pub mod kernels;
pub mod moe;
pub mod plot;
pub mod report;
pub mod serve;

use mla_rt::backend::{AttentionBatch, Backend, SeqChunk};
use mla_rt::config::ModelConfig;
use mla_rt::error::{Error, Result};
use mla_rt::kv::cache_dtype::{CacheRows, KvCacheDtype};
use mla_rt::kv::{slot, BlockManager, SeqBlocks};
use mla_rt::model::params::decode_step_weight_bytes;
use mla_rt::model::{AttentionForm, LogitRows, Model, Step};
use std::time::Instant;

/// Sequences per test: a number, or the largest batch whose caches fit the memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Fixed(usize),
    Max,
}

impl std::str::FromStr for BatchSize {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "max" => Ok(BatchSize::Max),
            _ => s
                .parse()
                .ok()
                .filter(|&n| n > 0 && n <= MAX_BENCH_BATCH)
                .map(BatchSize::Fixed)
                .ok_or_else(|| {
                    format!("\"{s}\" is not a batch size (1 to {MAX_BENCH_BATCH}, or max)")
                }),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    pub batches: Vec<BatchSize>,
    pub prompt: usize,
    pub gen: usize,
    pub depths: Vec<usize>,
    pub reps: usize,
    pub block_size: usize,
    /// Replay the decode test's steps from CUDA graphs where the backend has them.
    pub cuda_graphs: bool,
    /// The device's copy bandwidth in bytes/s, measured in this run (`None` on the CPU).
    pub copy_bytes_per_s: Option<f64>,
    /// Bytes the KV cache may take, for the max-batch column.
    pub memory_budget: u64,
    /// Bytes per cached value on this backend.
    pub cache_value_bytes: u64,
    /// Whether the backend keeps the linear weights in FP8 (a byte per weight in the roofline).
    pub fp8_weights: bool,
    /// What the cache stores (`--kv-cache-dtype`).
    pub cache_dtype: KvCacheDtype,
}

/// Most sequences a test runs (`--batch max` included: its `max batch` column still reports
/// all that fit).
pub const MAX_BENCH_BATCH: usize = 4096;

/// One measured configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BenchRow {
    /// The preset, followed by the cache dtype when several are benched (`model_label`).
    pub model: String,
    /// The cache dtype the row ran with, resolved: `f32`, `bf16` or `fp8`.
    pub kv_cache_dtype: &'static str,
    /// `pp512` (prefill of 512 tokens per sequence) or `tg128` (128 decode steps).
    pub test: String,
    pub batch: usize,
    /// Whether `batch` is the largest that fits the memory budget (`--batch max`).
    pub at_max: bool,
    /// Tokens already in each sequence's cache before the test.
    pub depth: usize,
    pub tokens_per_s: f64,
    pub std: f64,
    pub kv_bytes_per_token: u64,
    /// Sequences of depth + prompt + gen tokens whose caches fit the memory budget.
    pub max_batch: u64,
    /// Shares of the test's time in attention, in MoE and dense MLPs, and in everything else.
    pub attention_share: f64,
    pub ffn_share: f64,
    pub other_share: f64,
    /// Per decode step of a `tg` test on a device backend: CUDA graphs and kernels launched,
    /// and device→host waits (`None` for prefill and on the CPU).
    pub graphs_per_step: Option<f64>,
    pub launches_per_step: Option<f64>,
    pub waits_per_step: Option<f64>,
    /// A `tg` test's fraction of its memory roofline on a device: the time to move the
    /// weights a step reads (`decode_step_weight_params`) and its KV cache at the copy bandwidth
    /// measured in the run, over the step's time.
    pub roofline: Option<f64>,
}

/// `(attention, ffn, other)` shares of `total` seconds from a profile.
fn split(
    profile: &std::collections::BTreeMap<&'static str, mla_rt::profile::OpTime>,
    total: f64,
) -> (f64, f64, f64) {
    let get = |k: &str| profile.get(k).map_or(0.0, |t| t.secs);
    let attention = get("attention") / total;
    let ffn = (get("mlp") + get("moe")) / total;
    (attention, ffn, (1.0 - attention - ffn).max(0.0))
}

fn mean_std(samples: &[f64]) -> (f64, f64) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// A step feeding `len` tokens at positions `start..start + len` to each of `seqs`.
fn step(seqs: &[SeqBlocks], start: usize, len: usize, block_size: usize, vocab: usize) -> Step {
    let mut s = Step {
        token_ids: Vec::new(),
        positions: Vec::new(),
        slots: Vec::new(),
        batch: AttentionBatch {
            block_size,
            seqs: Vec::new(),
        },
    };
    for (i, seq) in seqs.iter().enumerate() {
        for p in start..start + len {
            s.token_ids.push(((p * 31 + i * 17 + 7) % vocab) as u32);
            s.positions.push(p as u32);
            s.slots.push(slot(&seq.table, p, block_size));
        }
        s.batch.seqs.push(SeqChunk {
            block_table: seq.table.clone(),
            context_len: start + len,
            query_len: len,
        });
    }
    s
}

/// Measures `model` at every batch and depth of `config`.
/// Runs `f` with per-op timing on and returns its (attention, MoE+MLP, other) shares.
fn profiled<B: Backend>(backend: &B, f: impl FnOnce() -> Result<()>) -> Result<(f64, f64, f64)> {
    mla_rt::profile::enable(backend.sync_fn());
    let t = Instant::now();
    let result = f();
    let secs = t.elapsed().as_secs_f64();
    let ops = mla_rt::profile::take();
    result?;
    Ok(split(&ops, secs))
}

/// Sequences of `total` tokens whose caches of `rows`, allocated in whole blocks, fit `budget`
/// bytes (`native_bytes`: the backend's activation size).
pub fn sequences_that_fit(
    c: &ModelConfig,
    block_size: usize,
    (rows, native_bytes): (&CacheRows, u64),
    budget: u64,
    total: usize,
) -> u64 {
    let per_token = rows.bytes_per_token(native_bytes) * c.num_hidden_layers() as u64;
    let seq_bytes = (total.div_ceil(block_size) as u64)
        .saturating_mul(block_size as u64)
        .saturating_mul(per_token);
    budget / seq_bytes.max(1)
}

/// The cache dtypes of `--kv-cache-dtype`, in the order given, each with the name it resolves to
/// on a backend of `native_bytes` activations (`CacheRows::describe`). Refuses an empty list and
/// two entries giving the same cache (`fp8,fp8`, or `auto,f32` on the CPU), so that every
/// (preset, dtype) pair has its own row label.
pub fn cache_dtypes(
    dtypes: &[KvCacheDtype],
    config: &ModelConfig,
    native_bytes: u64,
) -> Result<Vec<(KvCacheDtype, &'static str)>> {
    use clap::ValueEnum;
    let flag = |d: &KvCacheDtype| {
        d.to_possible_value()
            .map_or("?".into(), |v| v.get_name().to_string())
    };
    if dtypes.is_empty() {
        return Err(Error::InvalidInput(
            "--kv-cache-dtype needs at least one dtype".into(),
        ));
    }
    let mut out: Vec<(KvCacheDtype, &'static str)> = Vec::new();
    for &dtype in dtypes {
        let name = CacheRows::resolve(dtype, config, native_bytes)?.describe(native_bytes);
        match out.iter().find(|(d, n)| *d == dtype || *n == name) {
            Some((d, _)) if *d == dtype => {
                return Err(Error::InvalidInput(format!(
                    "--kv-cache-dtype lists {} twice; list each dtype once",
                    flag(&dtype)
                )))
            }
            Some((d, _)) => {
                return Err(Error::InvalidInput(format!(
                    "--kv-cache-dtype {} and {} are the same {name} cache on this device; list one",
                    flag(d),
                    flag(&dtype)
                )))
            }
            None => out.push((dtype, name)),
        }
    }
    Ok(out)
}

/// A row's model label: the bare preset when one cache dtype is benched (the output of a
/// single `--kv-cache-dtype` is unchanged), else `<preset> <dtype>`.
pub fn model_label(preset: &str, dtype_name: &str, several: bool) -> String {
    match several {
        true => format!("{preset} {dtype_name}"),
        false => preset.to_string(),
    }
}

/// `--batch max` where not one sequence fits.
pub fn no_sequence_fits(name: &str, total: usize, budget: u64) -> Error {
    Error::InvalidInput(format!(
        "{name}: --batch max: not one sequence of {total} tokens fits the cache budget of {budget} \
         bytes; raise --kv-cache-memory"
    ))
}

pub fn run<B: Backend>(
    name: &str,
    model: &Model<B>,
    backend: &B,
    config: &BenchConfig,
    mut progress: impl FnMut(&BenchRow),
) -> Result<Vec<BenchRow>> {
    let c = &model.config;
    let bs = config.block_size;
    let native = config.cache_value_bytes;
    let cache_rows = CacheRows::resolve(config.cache_dtype, c, native)?;
    let kv_bytes_per_token = cache_rows.bytes_per_token(native) * c.num_hidden_layers() as u64;
    let vocab = c.vocab_size();
    let mut rows = Vec::new();
    for &depth in &config.depths {
        let total = depth + config.prompt + config.gen;
        let per_seq = total.div_ceil(bs);
        let max_batch =
            sequences_that_fit(c, bs, (&cache_rows, native), config.memory_budget, total);
        for &size in &config.batches {
            let batch = match size {
                BatchSize::Fixed(n) => n,
                BatchSize::Max if max_batch == 0 => {
                    return Err(no_sequence_fits(name, total, config.memory_budget))
                }
                BatchSize::Max => max_batch.min(MAX_BENCH_BATCH as u64) as usize,
            };
            let mut blocks = BlockManager::new(batch * per_seq, bs, false);
            let mut cache =
                backend.alloc_cache_rows(c.num_hidden_layers(), batch * per_seq, bs, cache_rows)?;
            let mut seqs = vec![SeqBlocks::default(); batch];
            for seq in &mut seqs {
                blocks.reserve(seq, 0, total)?;
            }
            // The context the tests run on top of (not timed): prefilled for the first sequence
            // and copied into every other sequence's own blocks — the tests' cost does not
            // depend on which tokens the context holds.
            if depth > 0 {
                let s = step(&seqs[..1], 0, depth, bs, vocab);
                model.forward(
                    backend,
                    &mut cache,
                    &s,
                    AttentionForm::Auto,
                    LogitRows::LastPerSequence,
                )?;
                let pairs: Vec<(u32, u32)> = seqs[1..]
                    .iter()
                    .flat_map(|seq| {
                        (0..depth.div_ceil(bs)).map(|b| (seqs[0].table[b], seq.table[b]))
                    })
                    .collect();
                backend.copy_blocks(&mut cache, &pairs)?;
            }
            // Repeating a step rewrites the same slots with the same values, so reps need no reset.
            let prefill = step(&seqs, depth, config.prompt, bs, vocab);
            // Each step ends as greedy decoding does: the argmax of each sequence's logits.
            let forward = |cache: &mut B::KvCache, s: &Step| -> Result<()> {
                backend.argmax_rows(&model.forward(
                    backend,
                    cache,
                    s,
                    AttentionForm::Auto,
                    LogitRows::LastPerSequence,
                )?)?;
                Ok(())
            };
            let owner = mla_rt::backend::graph_owner();
            // `graphs`: replay the steps from CUDA graphs (the timed runs, as configured), or
            // launch eagerly (the profiled run: per-op spans time the kernels).
            let decode = |cache: &mut B::KvCache, graphs: bool| -> Result<()> {
                for i in 0..config.gen {
                    let s = step(&seqs, depth + config.prompt + i, 1, bs, vocab);
                    let mut forward = || {
                        model.forward(
                            backend,
                            cache,
                            &s,
                            AttentionForm::Auto,
                            LogitRows::LastPerSequence,
                        )
                    };
                    let logits = match graphs {
                        true => {
                            backend.forward_replayed(owner, s.batch.seqs.len(), &mut forward)?
                        }
                        false => forward()?,
                    };
                    backend.argmax_rows(&logits)?;
                }
                Ok(())
            };
            // The split comes from one more run of each test with per-op timers, which on a GPU
            // wait for the device around every op: that would slow the timed runs down.
            let mut tests = Vec::new();
            if config.prompt > 0 {
                let mut pp = Vec::new();
                for _ in 0..config.reps.max(1) {
                    let t = Instant::now();
                    forward(&mut cache, &prefill)?;
                    pp.push((batch * config.prompt) as f64 / t.elapsed().as_secs_f64());
                }
                let split = profiled(backend, || forward(&mut cache, &prefill))?;
                tests.push((format!("pp{}", config.prompt), pp, split, None));
            }
            if config.gen > 0 {
                let mut tg = Vec::new();
                let before = backend.counters();
                for _ in 0..config.reps.max(1) {
                    let t = Instant::now();
                    decode(&mut cache, config.cuda_graphs)?;
                    tg.push((batch * config.gen) as f64 / t.elapsed().as_secs_f64());
                }
                let steps = (config.reps.max(1) * config.gen) as f64;
                let per_step = before
                    .zip(backend.counters())
                    .map(|(b, a)| a.since(&b))
                    .map(|c| {
                        let per = |n: u64| n as f64 / steps;
                        (
                            per(c.graph_launches),
                            per(c.kernel_launches),
                            per(c.host_waits),
                        )
                    });
                let split = profiled(backend, || decode(&mut cache, false))?;
                tests.push((format!("tg{}", config.gen), tg, split, per_step));
            }
            for (test, samples, (attention_share, ffn_share, other_share), per_step) in tests {
                let (mean, std) = mean_std(&samples);
                let row = BenchRow {
                    model: name.to_string(),
                    kv_cache_dtype: cache_rows.describe(native),
                    test,
                    batch,
                    at_max: size == BatchSize::Max,
                    depth,
                    tokens_per_s: mean,
                    std,
                    kv_bytes_per_token,
                    max_batch,
                    attention_share,
                    ffn_share,
                    other_share,
                    graphs_per_step: per_step.map(|p| p.0),
                    launches_per_step: per_step.map(|p| p.1),
                    waits_per_step: per_step.map(|p| p.2),
                    roofline: match per_step {
                        Some(_) => config.copy_bytes_per_s.map(|bandwidth| {
                            let weights = decode_step_weight_bytes(
                                c,
                                batch,
                                config.cache_value_bytes,
                                config.fp8_weights,
                            );
                            let context = (depth + config.prompt) as f64 + config.gen as f64 / 2.0;
                            let kv = batch as f64 * context * kv_bytes_per_token as f64;
                            (weights + kv) / bandwidth / (batch as f64 / mean)
                        }),
                        None => None,
                    },
                };
                progress(&row);
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mla_rt::config::presets::preset_config;

    #[test]
    fn an_fp8_cache_fits_1_7_times_the_sequences_of_bf16() {
        // One layer of V2-Lite in 1 MB, 14 tokens in 7 blocks of 2: MLA caches 1,152 bytes per
        // token in bf16 and 656 in FP8 (FlashMLA's layout); its MHA twin 8,192 and
        // 2·16·(128 + 4) = 4,224.
        let fits = |name: &str, dtype| {
            let c = preset_config(name, Some(1)).unwrap();
            let rows = CacheRows::resolve(dtype, &c, 2).unwrap();
            (
                rows.bytes_per_token(2),
                sequences_that_fit(&c, 2, (&rows, 2), 1_000_000, 14),
            )
        };
        let mla_bf16 = fits("deepseek-v2-lite", KvCacheDtype::Bf16);
        let mla_fp8 = fits("deepseek-v2-lite", KvCacheDtype::Fp8);
        let mha_fp8 = fits("deepseek-v2-lite-mha", KvCacheDtype::Fp8);
        assert_eq!((mla_bf16, mla_fp8), ((1152, 62), (656, 108)));
        assert_eq!(mha_fp8, (4224, 16));
        assert!(mla_fp8.1 as f64 >= 1.7 * mla_bf16.1 as f64);
    }
}
