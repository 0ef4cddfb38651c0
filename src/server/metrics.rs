//! The server's Prometheus metrics (`GET /metrics`, text format 0.0.4), names prefixed `mla:`
//! as vLLM prefixes its `vllm:`: gauges of the engine's load, counters of tokens and requests,
//! and histograms of time to first token, inter-token and end-to-end latency.

use mla_rt::engine::request::{FinishReason, RequestOutput};
use std::fmt::Write as _;
use std::sync::Mutex;

/// Bucket upper bounds, in seconds.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5,
];
const E2E_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (c, &b) in self.counts.iter_mut().zip(self.bounds) {
            if v <= b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in self.counts.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// What the engine's thread publishes after each step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    pub running: usize,
    pub waiting: usize,
    /// Cache blocks held by a sequence (free blocks and unused prefix-cached ones excluded),
    /// and all blocks of the pool.
    pub blocks_used: usize,
    pub blocks_total: usize,
    pub preemptions: usize,
    pub prefix_queried_tokens: u64,
    pub prefix_hit_tokens: u64,
}

struct Inner {
    load: Load,
    prompt_tokens: u64,
    generation_tokens: u64,
    finished_stop: u64,
    finished_length: u64,
    aborted: u64,
    /// Requests the engine took; each ends once, as finished or aborted.
    accepted: u64,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
}

pub struct Metrics(Mutex<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Metrics(Mutex::new(Inner {
            load: Load::default(),
            prompt_tokens: 0,
            generation_tokens: 0,
            finished_stop: 0,
            finished_length: 0,
            aborted: 0,
            accepted: 0,
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
        }))
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while the lock was held leaves counters that are still counters.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_load(&self, load: Load) {
        self.lock().load = load;
    }

    pub fn load(&self) -> Load {
        self.lock().load
    }

    /// A finished request's tokens and latencies.
    pub fn finished(&self, o: &RequestOutput) {
        let mut m = self.lock();
        m.prompt_tokens += o.prompt_tokens as u64;
        m.generation_tokens += o.output_tokens.len() as u64;
        match o.finish_reason {
            FinishReason::Stop => m.finished_stop += 1,
            FinishReason::Length => m.finished_length += 1,
        }
        if !o.token_times.is_empty() {
            m.ttft.observe(o.ttft());
        }
        for itl in o.inter_token_latencies() {
            m.itl.observe(itl);
        }
        m.e2e.observe(o.latency());
    }

    /// A request (one choice) the engine took into its queue.
    pub fn accepted(&self) {
        self.lock().accepted += 1;
    }

    /// A request aborted before it finished (its client went away, or the server stopped).
    pub fn aborted(&self) {
        self.lock().aborted += 1;
    }

    pub fn render(&self) -> String {
        let m = self.lock();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let l = m.load;
        gauge(
            "mla:num_requests_running",
            "Requests in the engine's running batch.",
            l.running as f64,
        );
        gauge(
            "mla:num_requests_waiting",
            "Requests waiting for their first step.",
            l.waiting as f64,
        );
        gauge(
            "mla:kv_cache_usage_perc",
            "Fraction of KV cache blocks in use (1 = full).",
            l.blocks_used as f64 / l.blocks_total.max(1) as f64,
        );
        gauge(
            "mla:kv_cache_blocks_used",
            "KV cache blocks held by a request (0 when every block is free or only prefix-cached).",
            l.blocks_used as f64,
        );
        gauge(
            "mla:kv_cache_blocks_total",
            "KV cache blocks in the pool.",
            l.blocks_total as f64,
        );
        let hit_rate = match l.prefix_queried_tokens {
            0 => 0.0,
            q => l.prefix_hit_tokens as f64 / q as f64,
        };
        gauge(
            "mla:prefix_cache_hit_rate",
            "Prompt tokens served by the prefix cache over prompt tokens looked up.",
            hit_rate,
        );
        // A counter's samples: (labels, value), under one HELP and TYPE.
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        counter(
            "mla:prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache.",
            &[("", l.prefix_queried_tokens)],
        );
        counter(
            "mla:prefix_cache_hits_total",
            "Prompt tokens found in the prefix cache.",
            &[("", l.prefix_hit_tokens)],
        );
        counter(
            "mla:num_preemptions_total",
            "Sequences preempted to free cache blocks.",
            &[("", l.preemptions as u64)],
        );
        counter(
            "mla:prompt_tokens_total",
            "Prompt tokens of finished requests.",
            &[("", m.prompt_tokens)],
        );
        counter(
            "mla:generation_tokens_total",
            "Generated tokens of finished requests.",
            &[("", m.generation_tokens)],
        );
        counter(
            "mla:request_success_total",
            "Finished requests by finish reason.",
            &[
                ("{finished_reason=\"stop\"}", m.finished_stop),
                ("{finished_reason=\"length\"}", m.finished_length),
            ],
        );
        counter(
            "mla:request_aborted_total",
            "Requests aborted before they finished.",
            &[("", m.aborted)],
        );
        counter(
            "mla:request_accepted_total",
            "Requests (each choice) the engine took; each ends once, as a success or an abort.",
            &[("", m.accepted)],
        );
        m.ttft.render(
            &mut out,
            "mla:time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
        );
        m.itl.render(
            &mut out,
            "mla:inter_token_latency_seconds",
            "Time between consecutive generated tokens.",
        );
        m.e2e.render(
            &mut out,
            "mla:e2e_request_latency_seconds",
            "Time from arrival to the last token.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_the_text_parses() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 2.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![1, 2]);
        assert_eq!(h.count, 3);
        let m = Metrics::default();
        m.set_load(Load {
            running: 3,
            blocks_used: 2,
            blocks_total: 8,
            ..Load::default()
        });
        m.accepted();
        m.accepted();
        m.aborted();
        let text = m.render();
        assert!(text.contains("mla:num_requests_running 3\n"), "{text}");
        assert!(text.contains("mla:kv_cache_usage_perc 0.25\n"), "{text}");
        assert!(text.contains("mla:kv_cache_blocks_used 2\n"), "{text}");
        assert!(text.contains("mla:kv_cache_blocks_total 8\n"), "{text}");
        assert!(text.contains("mla:request_accepted_total 2\n"), "{text}");
        assert!(text.contains("mla:request_aborted_total 1\n"), "{text}");
        assert!(text.contains("mla:time_to_first_token_seconds_bucket{le=\"+Inf\"} 0\n"));
        // Every sample line is `name{labels} value` with a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(line.starts_with("mla:"), "{line}");
        }
    }
}
