//! CPU reference engine speed on a V2-Lite-shaped (but shrunk) random model, against ceilings
//! measured in the same run: memory read bandwidth for decode (which streams the activated
//! weights once per token) and this crate's own matmul throughput for prefill.
//!
//! `cargo bench --bench cpu_decode`

mod support;

use mla_rt::backend::cpu::matmul::{dot, matmul_nt};
use mla_rt::backend::cpu::CpuBackend;
use mla_rt::engine::session::Session;
use mla_rt::model::{AttentionForm, LogitRows};
use rayon::prelude::*;
use std::time::Instant;
use support::best_of;

fn main() {
    let support::BenchModel { model, params, .. } = support::v2_lite_shaped(4);
    let threads = rayon::current_num_threads();

    // Ceiling 1: read bandwidth over a buffer far larger than any cache, with the same
    // vectorised dot product the matmul uses (a plain sum would be latency-bound, not memory-bound).
    let buffer = vec![1.0f32; 128 << 20];
    let read_secs = best_of(3, || {
        buffer.par_chunks(1 << 16).map(|c| dot(c, c)).sum::<f32>()
    });
    let read_gbs = buffer.len() as f64 * 4.0 / read_secs / 1e9;
    // Ceiling 2: this crate's matmul on a square problem.
    let n = 1024;
    let (a, b) = (vec![0.5f32; n * n], vec![0.25f32; n * n]);
    let mm_gflops = 2.0 * (n * n * n) as f64 / best_of(3, || matmul_nt(&a, &b, n, n, n)) / 1e9;

    let prompt: Vec<u32> = (0..256u32).map(|i| (i * 31 + 7) % 8192).collect();
    let mut prefill_secs = f64::INFINITY;
    let mut decode_secs = f64::INFINITY;
    let decode_tokens = 32;
    for _ in 0..3 {
        let mut session = Session::new(
            &model,
            &CpuBackend::EXACT,
            prompt.len() + decode_tokens,
            64,
            AttentionForm::Auto,
        )
        .unwrap();
        let t = Instant::now();
        session.feed(&prompt, LogitRows::LastPerSequence).unwrap();
        prefill_secs = prefill_secs.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for i in 0..decode_tokens as u32 {
            session.feed(&[i], LogitRows::LastPerSequence).unwrap();
        }
        decode_secs = decode_secs.min(t.elapsed().as_secs_f64());
    }
    let activated_bytes = (params.activated - params.embedding) as f64 * 4.0;
    let decode_gbs = activated_bytes * decode_tokens as f64 / decode_secs / 1e9;
    let prefill_gflops = 2.0 * (params.activated - params.embedding) as f64 * prompt.len() as f64
        / prefill_secs
        / 1e9;
    println!(
        "cpu backend, {threads} threads; model: {:.1} M parameters, {:.1} M activated per token",
        params.total as f64 / 1e6,
        params.activated as f64 / 1e6
    );
    println!("| measure | value | ceiling (same run) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| prefill 256 tokens | {:.1} tok/s, {:.1} GFLOP/s | matmul {:.1} GFLOP/s | {:.2} |",
        prompt.len() as f64 / prefill_secs,
        prefill_gflops,
        mm_gflops,
        prefill_gflops / mm_gflops
    );
    println!(
        "| decode @256 | {:.1} tok/s, {:.2} GB/s of weights | read {:.2} GB/s | {:.2} |",
        decode_tokens as f64 / decode_secs,
        decode_gbs,
        read_gbs,
        decode_gbs / read_gbs
    );
}
