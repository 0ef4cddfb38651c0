//! `--quantization fp8`, `--kv-cache-dtype fp8` and `--fp8-activations` from the command line:
//! each changes the logits a little (rounding weights, cache rows or activations through FP8)
//! and keeps them close.

mod common;

use common::{fixtures_dir, mla, rel_l2, s};

fn logits(extra: &[&str]) -> Vec<Vec<f32>> {
    let work = tempfile::tempdir().unwrap();
    let output = work.path().join("logits.json");
    let model = fixtures_dir().join("v2-lite");
    let mut args = vec!["logits", "--model", s(&model), "--token-ids"];
    args.extend(["1,40,7,200,13,99,5,17,42,8", "--prefill", "4"]);
    args.extend(["--output", s(&output)]);
    args.extend(extra);
    let out = mla(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
    serde_json::from_value(file["logits"].clone()).unwrap()
}

#[test]
fn fp8_weights_and_cache_stay_close_to_f32() {
    let exact = logits(&[]);
    for flags in [
        &["--quantization", "fp8"][..],
        &["--kv-cache-dtype", "fp8"][..],
        &["--quantization", "fp8", "--kv-cache-dtype", "fp8"][..],
    ] {
        let got = logits(flags);
        let errors: Vec<f64> = got
            .iter()
            .zip(&exact)
            .map(|(g, e)| rel_l2(g, &e.iter().map(|&v| v as f64).collect::<Vec<_>>()))
            .collect();
        let worst = errors.iter().cloned().fold(0.0, f64::max);
        assert!(worst > 1e-4, "{flags:?} changed nothing");
        assert!(worst < 0.5, "{flags:?}: worst relative L2 {worst}");
    }
}

/// `--fp8-activations dynamic` on the CPU quantizes activations before FP8 weights, as the GPU's
/// FP8 GEMM does: the logits move a little from the exact product; `exact` is the CPU's default.
#[test]
fn fp8_activations_choose_the_cpu_product() {
    let exact = logits(&["--quantization", "fp8"]);
    assert_eq!(
        logits(&["--quantization", "fp8", "--fp8-activations", "exact"]),
        exact
    );
    let dynamic = logits(&["--quantization", "fp8", "--fp8-activations", "dynamic"]);
    let worst = dynamic
        .iter()
        .zip(&exact)
        .map(|(d, e)| rel_l2(d, &e.iter().map(|&v| v as f64).collect::<Vec<_>>()))
        .fold(0.0, f64::max);
    assert!(worst > 1e-4 && worst < 0.2, "worst relative L2 {worst}");
    // Without FP8 weights there is nothing to quantize.
    assert_eq!(logits(&["--fp8-activations", "dynamic"]), logits(&[]));
}
