//! `mla bench serve`: loads an OpenAI-compatible server as `vllm bench serve` does. Requests
//! arrive as a Poisson process (gamma-distributed gaps when bursty), each a streamed completion
//! whose first and later chunks are timed; the report gives throughput and the TTFT, TPOT, ITL
//! and end-to-end latency distributions.

use super::http_client::send;
use crate::bench::report::Format;
use clap::Args;
use mla_rt::error::{Error, Result};
use mla_rt::util::rng::SplitMix64;
use mla_rt::util::summary::mean_median_p99;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct ServeBenchArgs {
    /// The server, e.g. http://127.0.0.1:8000.
    #[arg(long, value_name = "URL")]
    pub url: String,

    /// The model name to send (default: the server's first, from /v1/models).
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,

    /// random (prompts of --input-len random token ids) or a JSONL file of
    /// {"prompt": TEXT, "max_tokens": N} lines (as `mla generate --prompts` reads).
    #[arg(long, default_value = "random", value_name = "random|FILE.jsonl")]
    pub dataset: String,

    /// Requests to send (random dataset; a file sends each line once).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub num_prompts: usize,

    /// Prompt tokens of the random dataset.
    #[arg(long, default_value_t = 64, value_name = "I")]
    pub input_len: usize,

    /// Tokens each request generates (EOS ignored), unless its line says otherwise.
    #[arg(long, default_value_t = 64, value_name = "O")]
    pub output_len: usize,

    /// Requests per second (a Poisson process), or inf: all at once.
    #[arg(long, default_value = "inf", value_name = "R")]
    pub request_rate: f64,

    /// Shape of the gamma distribution of the gaps: 1 is Poisson, below 1 burstier.
    #[arg(long, default_value_t = 1.0, value_name = "B")]
    pub burstiness: f64,

    /// Most requests in flight at once.
    #[arg(long, value_name = "C")]
    pub max_concurrency: Option<usize>,

    /// Seed of the random dataset and the arrival times.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,

    /// `Authorization: Bearer KEY`.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,

    #[arg(long, value_enum, default_value_t = Format::Md)]
    pub format: Format,
}

/// What one request measured.
#[derive(Debug, Clone, Default)]
struct Sample {
    ok: bool,
    error: String,
    prompt_tokens: usize,
    output_tokens: usize,
    ttft: f64,
    /// Gaps between consecutive chunks with text.
    itl: Vec<f64>,
    latency: f64,
}

pub fn run(args: &ServeBenchArgs) -> Result<()> {
    let address = args
        .url
        .trim_end_matches('/')
        .strip_prefix("http://")
        .ok_or_else(|| {
            Error::InvalidInput(format!("--url must start with http://, found {}", args.url))
        })?
        .to_string();
    let positive = |v: f64| v > 0.0 && !v.is_nan();
    if !(positive(args.request_rate) && positive(args.burstiness) && args.burstiness.is_finite()) {
        return Err(Error::InvalidInput(
            "--request-rate and --burstiness must be positive".into(),
        ));
    }
    if args.max_concurrency == Some(0) || args.output_len == 0 {
        return Err(Error::InvalidInput(
            "--max-concurrency and --output-len must be at least 1".into(),
        ));
    }
    let auth = args.api_key.as_ref().map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let model = match &args.model {
        Some(m) => m.clone(),
        None => served_model(&address, &headers)?,
    };
    let prompts = dataset(args)?;
    let mut rng = SplitMix64(args.seed ^ 0x5eed);
    let total = prompts.len();
    let progress = indicatif::ProgressBar::new(total as u64);
    let (done_tx, done_rx) = mpsc::channel::<Sample>();
    let (slot_tx, slot_rx) = mpsc::channel::<()>();
    for _ in 0..args.max_concurrency.unwrap_or(total).min(total) {
        let _ = slot_tx.send(());
    }
    let start = Instant::now();
    let mut next_at = 0.0f64;
    let mut workers = Vec::with_capacity(total);
    let mut samples = Vec::with_capacity(total);
    for body in prompts {
        if args.request_rate.is_finite() {
            next_at += gamma(
                &mut rng,
                args.burstiness,
                1.0 / (args.request_rate * args.burstiness),
            );
            let wait = next_at - start.elapsed().as_secs_f64();
            if wait > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(wait));
            }
        }
        let _ = slot_rx.recv();
        let (address, done, slot) = (address.clone(), done_tx.clone(), slot_tx.clone());
        let auth = auth.clone();
        let body = with_model(body, &model);
        workers.push(std::thread::spawn(move || {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            let sample = one(&address, &headers, &body);
            let _ = done.send(sample);
            let _ = slot.send(());
        }));
        samples.extend(done_rx.try_iter().inspect(|_| progress.inc(1)));
    }
    drop(done_tx);
    samples.extend(done_rx.iter().inspect(|_| progress.inc(1)));
    for w in workers {
        let _ = w.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let report = Report::new(&samples, elapsed, args);
    crate::cli::output::say(&format!("{}\n", report.render(args.format)))?;
    Ok(())
}

fn served_model(address: &str, headers: &[(&str, &str)]) -> Result<String> {
    let err = |e: String| Error::InvalidInput(format!("http://{address}/v1/models: {e}"));
    let r = send(
        address,
        "GET",
        "/v1/models",
        headers,
        b"",
        Duration::from_secs(30),
    )
    .map_err(|e| err(e.to_string()))?;
    let text = r.text().map_err(|e| err(e.to_string()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| err(format!("{e}: {text}")))?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| err(format!("no model in {text}")))
}

/// The request bodies (without `model`): random token ids, or the file's lines.
fn dataset(args: &ServeBenchArgs) -> Result<Vec<Value>> {
    if args.dataset == "random" {
        if args.input_len == 0 {
            return Err(Error::InvalidInput("--input-len must be at least 1".into()));
        }
        let mut rng = SplitMix64(args.seed);
        // Ids below 1,000 (past the first ten, often special) exist in any real vocabulary.
        return Ok((0..args.num_prompts)
            .map(|_| {
                let ids: Vec<u32> = (0..args.input_len)
                    .map(|_| 10 + (rng.next_u64() % 990) as u32)
                    .collect();
                request_body(json!(ids), args.output_len)
            })
            .collect());
    }
    let path = PathBuf::from(&args.dataset);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = format!("{}:{}", path.display(), n + 1);
        let v: Value =
            serde_json::from_str(line).map_err(|e| Error::InvalidInput(format!("{at}: {e}")))?;
        let prompt = v
            .get("prompt")
            .filter(|p| p.is_string())
            .ok_or_else(|| Error::InvalidInput(format!("{at}: no \"prompt\" text")))?;
        let max = v
            .get("max_tokens")
            .and_then(Value::as_u64)
            .map_or(args.output_len, |m| m as usize);
        out.push(request_body(prompt.clone(), max));
    }
    if out.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: no requests",
            path.display()
        )));
    }
    Ok(out)
}

fn request_body(prompt: Value, max_tokens: usize) -> Value {
    json!({
        "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": true, "temperature": 0,
        "stream": true, "stream_options": {"include_usage": true},
    })
}

fn with_model(mut body: Value, model: &str) -> Vec<u8> {
    body["model"] = json!(model);
    body.to_string().into_bytes()
}

/// One streamed request, timed.
fn one(address: &str, headers: &[(&str, &str)], body: &[u8]) -> Sample {
    let start = Instant::now();
    let mut s = Sample::default();
    let result = (|| -> std::io::Result<()> {
        let mut r = send(
            address,
            "POST",
            "/v1/completions",
            headers,
            body,
            Duration::from_secs(600),
        )?;
        if r.status != 200 {
            let status = r.status;
            let retry = r
                .header("retry-after")
                .map(|s| format!(" (retry after {s} s)"));
            s.error = format!("HTTP {status}{}: {}", retry.unwrap_or_default(), r.text()?);
            return Ok(());
        }
        let mut last: Option<Instant> = None;
        while let Some(data) = r.next_event()? {
            if data == "[DONE]" {
                break;
            }
            let v: Value = serde_json::from_str(&data).unwrap_or_default();
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                s.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
                s.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
            }
            if let Some(e) = v.get("error") {
                s.error = e.to_string();
                return Ok(());
            }
            let text = v["choices"][0]["text"].as_str().unwrap_or("");
            if !text.is_empty() {
                let now = Instant::now();
                match last {
                    None => s.ttft = now.duration_since(start).as_secs_f64(),
                    Some(l) => s.itl.push(now.duration_since(l).as_secs_f64()),
                }
                last = Some(now);
            }
        }
        s.ok = s.output_tokens > 0;
        Ok(())
    })();
    if let Err(e) = result {
        s.error = e.to_string();
    }
    s.latency = start.elapsed().as_secs_f64();
    s
}

/// A Gamma(shape, scale) draw (Marsaglia–Tsang; shape < 1 by the boost).
fn gamma(rng: &mut SplitMix64, shape: f64, scale: f64) -> f64 {
    if shape < 1.0 {
        let u = rng.next_f64().max(f64::MIN_POSITIVE);
        return gamma(rng, shape + 1.0, scale) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        // A standard normal by Box–Muller.
        let (u1, u2) = (rng.next_f64().max(f64::MIN_POSITIVE), rng.next_f64());
        let x = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = rng.next_f64().max(f64::MIN_POSITIVE);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v * scale;
        }
    }
}

/// Mean, median and 99th percentile, in milliseconds.
fn stats(seconds: Vec<f64>) -> [f64; 3] {
    mean_median_p99(seconds).map(|s| s * 1e3)
}

#[derive(Debug, serde::Serialize)]
struct Report {
    successful_requests: usize,
    failed_requests: usize,
    first_error: Option<String>,
    duration_s: f64,
    request_throughput: f64,
    output_tokens_per_s: f64,
    total_tokens_per_s: f64,
    max_concurrency: Option<usize>,
    request_rate: f64,
    /// [mean, median, p99] in ms.
    ttft_ms: [f64; 3],
    tpot_ms: [f64; 3],
    itl_ms: [f64; 3],
    e2e_ms: [f64; 3],
}

impl Report {
    fn new(samples: &[Sample], elapsed: f64, args: &ServeBenchArgs) -> Self {
        let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
        let prompt: usize = ok.iter().map(|s| s.prompt_tokens).sum();
        let output: usize = ok.iter().map(|s| s.output_tokens).sum();
        Report {
            successful_requests: ok.len(),
            failed_requests: samples.len() - ok.len(),
            first_error: samples.iter().find(|s| !s.ok).map(|s| s.error.clone()),
            duration_s: elapsed,
            request_throughput: ok.len() as f64 / elapsed,
            output_tokens_per_s: output as f64 / elapsed,
            total_tokens_per_s: (prompt + output) as f64 / elapsed,
            max_concurrency: args.max_concurrency,
            request_rate: args.request_rate,
            ttft_ms: stats(ok.iter().map(|s| s.ttft).collect()),
            tpot_ms: stats(
                ok.iter()
                    .filter(|s| s.output_tokens > 1)
                    .map(|s| (s.latency - s.ttft) / (s.output_tokens - 1) as f64)
                    .collect(),
            ),
            itl_ms: stats(ok.iter().flat_map(|s| s.itl.iter().copied()).collect()),
            e2e_ms: stats(ok.iter().map(|s| s.latency).collect()),
        }
    }

    fn render(&self, format: Format) -> String {
        if format == Format::Json {
            return serde_json::to_string_pretty(self).unwrap_or_default();
        }
        let mut out = format!(
            "| metric | value |\n|---|---:|\n| successful requests | {} |\n| failed requests | {} |\n\
             | max concurrency | {} |\n| request rate (req/s) | {} |\n| duration (s) | {:.2} |\n\
             | request throughput (req/s) | {:.2} |\n| output tokens/s | {:.1} |\n\
             | total tokens/s | {:.1} |\n",
            self.successful_requests,
            self.failed_requests,
            self.max_concurrency.map_or("-".into(), |c| c.to_string()),
            self.request_rate,
            self.duration_s,
            self.request_throughput,
            self.output_tokens_per_s,
            self.total_tokens_per_s,
        );
        for (name, [mean, median, p99]) in [
            ("TTFT", self.ttft_ms),
            ("TPOT", self.tpot_ms),
            ("ITL", self.itl_ms),
            ("E2E latency", self.e2e_ms),
        ] {
            out += &format!(
                "| {name} mean / median / p99 (ms) | {mean:.2} / {median:.2} / {p99:.2} |\n"
            );
        }
        if let Some(e) = &self.first_error {
            out += &format!("\nfirst error: {e}\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_draws_have_the_right_mean() {
        let mut rng = SplitMix64(1);
        for (shape, scale) in [(1.0, 0.5), (0.5, 2.0), (3.0, 0.1)] {
            let n = 20_000;
            let mean: f64 = (0..n).map(|_| gamma(&mut rng, shape, scale)).sum::<f64>() / n as f64;
            assert!(
                (mean / (shape * scale) - 1.0).abs() < 0.05,
                "{shape} {scale}: {mean}"
            );
        }
    }

    #[test]
    fn stats_are_mean_median_and_p99_in_ms() {
        let v: Vec<f64> = (1..=100).map(|i| i as f64 / 1000.0).collect();
        let [mean, median, p99] = stats(v);
        assert!(
            (mean - 50.5).abs() < 1e-9 && (median - 51.0).abs() < 1e-9 && (p99 - 99.0).abs() < 1e-9
        );
        assert_eq!(stats(Vec::new()), [0.0; 3]);
    }
}
