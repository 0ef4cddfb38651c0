//! Batched generation against one-request-at-a-time generation on the same engine, and the
//! engine's own cost per step (scheduling, batch building, sampling: everything outside the
//! forward pass).
//!
//! `cargo bench --bench engine_throughput [-- REQUESTS PROMPT_TOKENS OUTPUT_TOKENS]`
//! (default 32 × 128 + 64 on the CPU; the GPU figure of the engine issue is 256 × 512 + 256).

mod support;

use mla_rt::backend::cpu::CpuBackend;
use mla_rt::engine::batch_engine::{Engine, EngineConfig};
use mla_rt::engine::request::Request;
use mla_rt::engine::sampler::SamplingParams;
use mla_rt::engine::scheduler::SchedulerConfig;
use mla_rt::model::AttentionForm;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (requests, prompt, output) = match args[..] {
        [r, p, o] => (r, p, o),
        _ => (32, 128, 64),
    };
    let bench = support::v2_lite_shaped(4);
    let make = |i: usize| Request {
        id: i.to_string(),
        prompt: (0..prompt as u32)
            .map(|t| 2 + (t * 31 + i as u32 * 17) % 8000)
            .collect(),
        sampling: SamplingParams::default(),
        max_tokens: output,
        stop: Vec::new(),
        ignore_eos: true,
    };
    let run = |max_num_seqs: usize| {
        let config = EngineConfig {
            block_size: 64,
            num_blocks: requests * (prompt + output).div_ceil(64),
            prefix_caching: false,
            scheduler: SchedulerConfig {
                max_num_seqs,
                max_batched_tokens: 2048,
            },
            attention: AttentionForm::Auto,
            cuda_graphs: false,
            cache_dtype: Default::default(),
        };
        let mut engine = Engine::new(&bench.model, &CpuBackend::EXACT, None, config).unwrap();
        for i in 0..requests {
            engine.add_request(make(i)).unwrap();
        }
        let start = Instant::now();
        let outputs = engine.run_to_completion(|_| {}).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let generated: usize = outputs.iter().map(|o| o.output_tokens.len()).sum();
        (generated as f64 / secs, engine.stats)
    };
    let (batched, stats) = run(requests);
    let (alone, _) = run(1);
    println!(
        "cpu backend, {} threads; {requests} requests × ({prompt} prompt + {output} output tokens)",
        rayon::current_num_threads()
    );
    println!("| run | output tokens/s | ratio |");
    println!("|---|---|---|");
    println!("| batch size 1 | {alone:.1} | 1.00 |");
    println!(
        "| continuous batching (up to {}) | {batched:.1} | {:.2} |",
        stats.max_batch_seqs,
        batched / alone
    );
    println!(
        "engine time outside the forward pass: {:.2}% of step time over {} steps",
        stats.overhead_fraction() * 100.0,
        stats.steps
    );
}
