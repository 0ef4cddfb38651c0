//! Test helpers: tiny random DeepSeek checkpoints written to temporary folders, and the
//! comparison metric of the project (relative L2 per position).
#![allow(dead_code)]

use mla_rt::util::rng::SplitMix64;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Deterministic pseudo-random numbers: the sampler's SplitMix64, Box-Muller normals.
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64(seed))
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
    }

    pub fn normals(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * std).collect()
    }
}

/// A tiny DeepSeek config; `overrides` replace or add keys.
pub fn tiny_config(model_type: &str, overrides: Value) -> Value {
    let mut config = json!({
        "model_type": model_type,
        "vocab_size": 97,
        "hidden_size": 32,
        "intermediate_size": 48,
        "moe_intermediate_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "q_lora_rank": null,
        "kv_lora_rank": 24,
        "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 8,
        "v_head_dim": 12,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "routed_scaling_factor": 1.0,
        "topk_method": if model_type == "deepseek_v3" { "noaux_tc" } else { "greedy" },
        "scoring_func": if model_type == "deepseek_v3" { "sigmoid" } else { "softmax" },
        "n_group": 4,
        "topk_group": 2,
        "norm_topk_prob": model_type == "deepseek_v3",
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                          "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
    });
    if let (Value::Object(c), Value::Object(o)) = (&mut config, overrides) {
        for (k, v) in o {
            c.insert(k, v);
        }
    }
    config
}

fn u(config: &Value, key: &str) -> usize {
    config[key].as_u64().unwrap_or(0) as usize
}

/// Random weights for `config`: name → (shape, values). Experts in the published layout.
pub fn random_weights(config: &Value, seed: u64) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut rng = Rng::new(seed);
    let mut w = BTreeMap::new();
    let (h, n, v) = (
        u(config, "hidden_size"),
        u(config, "num_attention_heads"),
        u(config, "vocab_size"),
    );
    let (dn, dr, dv, r) = (
        u(config, "qk_nope_head_dim"),
        u(config, "qk_rope_head_dim"),
        u(config, "v_head_dim"),
        u(config, "kv_lora_rank"),
    );
    let linear = |w: &mut BTreeMap<_, _>, rng: &mut Rng, name: String, out: usize, inp: usize| {
        w.insert(
            name,
            (
                vec![out, inp],
                rng.normals(out * inp, 1.0 / (inp as f32).sqrt()),
            ),
        );
    };
    let norm = |w: &mut BTreeMap<_, _>, rng: &mut Rng, name: String, len: usize| {
        w.insert(
            name,
            (
                vec![len],
                (0..len).map(|_| 1.0 + 0.1 * rng.normal()).collect(),
            ),
        );
    };
    w.insert(
        "model.embed_tokens.weight".into(),
        (vec![v, h], rng.normals(v * h, 1.0)),
    );
    norm(&mut w, &mut rng, "model.norm.weight".into(), h);
    if config["tie_word_embeddings"] != json!(true) {
        linear(&mut w, &mut rng, "lm_head.weight".into(), v, h);
    }
    let experts = u(config, "n_routed_experts");
    for l in 0..u(config, "num_hidden_layers") {
        let p = format!("model.layers.{l}");
        norm(&mut w, &mut rng, format!("{p}.input_layernorm.weight"), h);
        norm(
            &mut w,
            &mut rng,
            format!("{p}.post_attention_layernorm.weight"),
            h,
        );
        match config["q_lora_rank"].as_u64() {
            None => linear(
                &mut w,
                &mut rng,
                format!("{p}.self_attn.q_proj.weight"),
                n * (dn + dr),
                h,
            ),
            Some(rq) => {
                let rq = rq as usize;
                linear(
                    &mut w,
                    &mut rng,
                    format!("{p}.self_attn.q_a_proj.weight"),
                    rq,
                    h,
                );
                norm(
                    &mut w,
                    &mut rng,
                    format!("{p}.self_attn.q_a_layernorm.weight"),
                    rq,
                );
                linear(
                    &mut w,
                    &mut rng,
                    format!("{p}.self_attn.q_b_proj.weight"),
                    n * (dn + dr),
                    rq,
                );
            }
        }
        linear(
            &mut w,
            &mut rng,
            format!("{p}.self_attn.kv_a_proj_with_mqa.weight"),
            r + dr,
            h,
        );
        norm(
            &mut w,
            &mut rng,
            format!("{p}.self_attn.kv_a_layernorm.weight"),
            r,
        );
        linear(
            &mut w,
            &mut rng,
            format!("{p}.self_attn.kv_b_proj.weight"),
            n * (dn + dv),
            r,
        );
        linear(
            &mut w,
            &mut rng,
            format!("{p}.self_attn.o_proj.weight"),
            h,
            n * dv,
        );
        let mlp = |w: &mut BTreeMap<_, _>, rng: &mut Rng, prefix: String, inter: usize| {
            linear(w, rng, format!("{prefix}.gate_proj.weight"), inter, h);
            linear(w, rng, format!("{prefix}.up_proj.weight"), inter, h);
            linear(w, rng, format!("{prefix}.down_proj.weight"), h, inter);
        };
        if experts > 0 && l >= u(config, "first_k_dense_replace") {
            let im = u(config, "moe_intermediate_size");
            linear(&mut w, &mut rng, format!("{p}.mlp.gate.weight"), experts, h);
            if config["model_type"] == json!("deepseek_v3") {
                w.insert(
                    format!("{p}.mlp.gate.e_score_correction_bias"),
                    (vec![experts], rng.normals(experts, 0.1)),
                );
            }
            for e in 0..experts {
                mlp(&mut w, &mut rng, format!("{p}.mlp.experts.{e}"), im);
            }
            let shared = u(config, "n_shared_experts");
            if shared > 0 {
                mlp(
                    &mut w,
                    &mut rng,
                    format!("{p}.mlp.shared_experts"),
                    im * shared,
                );
            }
        } else {
            mlp(
                &mut w,
                &mut rng,
                format!("{p}.mlp"),
                u(config, "intermediate_size"),
            );
        }
    }
    w
}

/// Rewrites published per-expert tensors into transformers 5's fused `gate_up_proj`/`down_proj`.
pub fn fuse_experts(weights: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>, config: &Value) {
    let experts = u(config, "n_routed_experts");
    for l in 0..u(config, "num_hidden_layers") {
        let p = format!("model.layers.{l}.mlp.experts");
        if !weights.contains_key(&format!("{p}.0.gate_proj.weight")) {
            continue;
        }
        let (mut gate_up, mut down) = (Vec::new(), Vec::new());
        let (mut inter, mut hidden) = (0, 0);
        for e in 0..experts {
            let (gs, g) = weights
                .remove(&format!("{p}.{e}.gate_proj.weight"))
                .unwrap();
            let (_, up) = weights.remove(&format!("{p}.{e}.up_proj.weight")).unwrap();
            let (_, d) = weights
                .remove(&format!("{p}.{e}.down_proj.weight"))
                .unwrap();
            (inter, hidden) = (gs[0], gs[1]);
            gate_up.extend(g);
            gate_up.extend(up);
            down.extend(d);
        }
        weights.insert(
            format!("{p}.gate_up_proj"),
            (vec![experts, 2 * inter, hidden], gate_up),
        );
        weights.insert(
            format!("{p}.down_proj"),
            (vec![experts, hidden, inter], down),
        );
    }
}

/// Serialises tensors as f32 safetensors bytes.
pub fn safetensors_bytes(weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Vec<u8> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = weights
        .iter()
        .map(|(n, (s, d))| {
            (
                n.clone(),
                s.clone(),
                d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// Writes `config.json` and `model.safetensors` into a fresh temporary folder.
pub fn write_model(
    config: &Value,
    weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        safetensors_bytes(weights),
    )
    .unwrap();
    dir
}

/// `‖a − b‖ / ‖b‖` over one row.
pub fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    let err = (num / den).sqrt();
    // NaN never passes: make it compare as infinitely wrong.
    if err.is_nan() {
        f64::INFINITY
    } else {
        err
    }
}

/// Asserts that `got` is within `tolerance` relative L2 of `want` (NaN never passes).
pub fn assert_close(
    what: &str,
    got: &mla_rt::weights::HostTensor,
    want: &mla_rt::weights::HostTensor,
    tolerance: f64,
) {
    assert_eq!(got.shape, want.shape, "{what}");
    let want64: Vec<f64> = want.data.iter().map(|&v| v as f64).collect();
    let err = rel_l2(&got.data, &want64);
    assert!(
        err <= tolerance,
        "{what}: relative L2 {err:.3e} > {tolerance:e}"
    );
    eprintln!("{what}: relative L2 {err:.2e}");
}

pub fn fixtures_dir() -> PathBuf {
    // Relative to the working directory (the crate root under cargo test), so test binaries
    // copied elsewhere find the fixtures of the tree they run in.
    Path::new("tests").join("fixtures")
}

/// Runs the `mla` binary with `args` and waits for it.
pub fn mla<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mla"))
        .args(args)
        .output()
        .expect("run mla")
}

/// A path as the `&str` an argument list takes.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Batch mode on `model` with `requests` as the JSONL file (in a fresh folder, returned with the
/// run and the output's path) and `extra` flags.
pub fn batch(
    model: &Path,
    requests: &str,
    extra: &[&str],
) -> (std::process::Output, tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let (prompts, output) = (work.path().join("p.jsonl"), work.path().join("o.jsonl"));
    std::fs::write(&prompts, requests).unwrap();
    let mut args = vec!["generate", "--model", s(model), "--prompts", s(&prompts)];
    args.extend(["--output", s(&output)]);
    args.extend(extra);
    (mla(&args), work, output)
}
