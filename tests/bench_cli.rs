//! `mla bench` on the CPU with presets cut to one layer: the structure of its output, not speed.

use serde_json::Value;
use std::process::Command;

fn mla(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mla"))
        .args(args)
        .output()
        .expect("run mla")
}

#[test]
fn bench_reports_throughput_cache_size_and_mla_vs_gqa_ratios() {
    let work = tempfile::tempdir().unwrap();
    let plot = work.path().join("bench.svg");
    let out = mla(&[
        "bench",
        "--plot",
        plot.to_str().unwrap(),
        "--preset",
        "deepseek-v2-lite,deepseek-v2-lite-gqa4",
        "--layers",
        "1",
        "--batch",
        "1,2",
        "--prompt",
        "4",
        "--gen",
        "2",
        "--reps",
        "2",
        "--kv-cache-memory",
        "1GiB",
        "--compare",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 2 * 2, "2 presets × 2 batches × (pp, tg)");
    for row in rows {
        assert!(row["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(row["std"].as_f64().unwrap() >= 0.0);
        let (kv, max_batch) = (
            row["kv_bytes_per_token"].as_u64().unwrap(),
            row["max_batch"].as_u64().unwrap(),
        );
        // One layer, f32 on the CPU: MLA caches 512 + 64 values, GQA-4 caches 2·4·128.
        let expected_kv = if row["model"] == "deepseek-v2-lite" {
            576 * 4
        } else {
            2 * 4 * 128 * 4
        };
        assert_eq!(kv, expected_kv, "{row}");
        // One cache dtype: bare preset labels, the resolved dtype in its own field.
        assert_eq!(row["kv_cache_dtype"], "f32", "{row}");
        // 6 tokens take one whole 64-token block.
        assert_eq!(max_batch, (1u64 << 30) / (64 * kv), "{row}");
        let shares =
            ["attention_share", "ffn_share", "other_share"].map(|k| row[k].as_f64().unwrap());
        assert!(shares.iter().all(|s| (0.0..=1.0).contains(s)), "{row}");
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{row}");
        assert!(
            shares[0] > 0.0 && shares[1] > 0.0,
            "attention and the MLP both take time: {row}"
        );
    }
    let tests: Vec<&str> = rows.iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert!(tests.contains(&"pp4") && tests.contains(&"tg2"));
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<polyline").count(),
        2,
        "one decode line per preset"
    );
    assert!(svg.contains("deepseek-v2-lite-gqa4") && svg.contains("max batch"));
    let compare = report["compare"].as_array().unwrap();
    assert_eq!(compare.len(), 4);
    for c in compare {
        assert_eq!(c["baseline"], "deepseek-v2-lite");
        assert!(
            (c["kv_ratio"].as_f64().unwrap() - 4096.0 / 2304.0).abs() < 1e-9,
            "{c}"
        );
        assert!(
            (c["max_batch_ratio"].as_f64().unwrap() - 4096.0 / 2304.0).abs() < 1e-3,
            "{c}"
        );
    }
}

#[test]
fn bench_refuses_unknown_presets_and_impossible_depths() {
    let out = mla(&["bench", "--preset", "gpt-5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.lines().count() == 1
            && err.contains("unknown preset \"gpt-5\""),
        "{err}"
    );
    let out = mla(&["bench", "--preset", "llama2-7b", "--depth", "5000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("max_position_embeddings"),
        "{err}"
    );
}

#[test]
fn bench_kernels_is_a_gpu_benchmark_and_says_so() {
    let out = mla(&["bench", "kernels", "--device", "cpu"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--device cuda"), "{err}");
    for suite in ["attention", "moe"] {
        let out = mla(&["bench", suite, "--device", "cpu"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--device cuda"), "{err}");
    }
    let out = mla(&["bench", "moe", "--shape", "v2-lite,v4"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--shape v4: expected v2-lite, v3 or tiny"),
        "{err}"
    );
    // Without a GPU (or without kernels in the build) they fail with one line, not a panic.
    for suite in ["kernels", "attention", "moe"] {
        let out = mla(&["bench", suite]);
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            assert!(err.starts_with("error: "), "{err}");
        }
    }
}

#[test]
fn bench_attention_checks_its_arguments_before_opening_the_gpu() {
    for (args, message) in [
        (&["--waves", "0"][..], "--waves must be positive, not 0"),
        (&["--waves", "1,-2"][..], "--waves must be positive, not -2"),
        (&["--waves", "inf"][..], "--waves must be positive, not inf"),
        (
            &["--context", "0"][..],
            "--heads, --batch and --context must be positive",
        ),
    ] {
        let out = mla(&[&["bench", "attention"][..], args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.trim().lines().count() == 1 && err.contains(message),
            "{args:?}: {err}"
        );
    }
    // An unknown kernel is refused with the list of those there are: the experimental ones
    // only in a build with them.
    let out = mla(&["bench", "attention", "--kernel", "16-row,deep"]);
    let err = String::from_utf8_lossy(&out.stderr);
    let experimental = cfg!(feature = "experimental-kernels");
    assert!(
        !out.status.success()
            && err.contains("wgmma, mma, 16-row")
            && err.contains("16-row-deep") == experimental
            && err.contains("wgmma-rs") == experimental,
        "{err}"
    );
}

#[test]
fn batch_max_runs_each_model_at_its_largest_batch_and_compares_those() {
    // One layer of V2-Lite: 2,304 bytes/token for MLA against 16,384 for its MHA twin; a budget
    // of 300 KB and 4 + 2 tokens at depth 8 (14 tokens, 7 blocks of 2) fits 9 MLA sequences
    // and 1 MHA one.
    let out = mla(&[
        "bench",
        "--preset",
        "deepseek-v2-lite,deepseek-v2-lite-mha",
        "--layers",
        "1",
        "--batch",
        "max",
        "--depth",
        "8",
        "--prompt",
        "4",
        "--gen",
        "2",
        "--reps",
        "1",
        "--kv-cache-memory",
        "300KB",
        "--block-size",
        "2",
        "--compare",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("| 9 (max) |") && text.contains("| 1 (max) |"),
        "{text}"
    );
    assert!(text.contains("max (9 vs 1)"), "{text}");
    let out = mla(&["bench", "--preset", "llama2-7b", "--batch", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("max"), "{err}");
}

#[test]
fn kv_cache_dtype_list_runs_every_preset_at_every_dtype_against_the_first_pair() {
    // Issue #26: MLA-fp8 against MLA-bf16, MHA-fp8 and MHA-bf16 in one table. One layer of
    // V2-Lite, 300 KB, 14 tokens in 7 blocks of 2: MLA caches 656 bytes/token in FP8 and 1,152
    // in bf16 (32 and 18 sequences), its MHA twin 4,224 and 8,192 (5 and 2).
    let out = mla(&[
        "bench",
        "--preset",
        "deepseek-v2-lite,deepseek-v2-lite-mha",
        "--kv-cache-dtype",
        "fp8,bf16",
        "--layers",
        "1",
        "--batch",
        "max",
        "--depth",
        "8",
        "--prompt",
        "4",
        "--gen",
        "2",
        "--reps",
        "1",
        "--kv-cache-memory",
        "300KB",
        "--block-size",
        "2",
        "--compare",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let pairs = [
        ("deepseek-v2-lite fp8", "fp8", 656, 32),
        ("deepseek-v2-lite bf16", "bf16", 1152, 18),
        ("deepseek-v2-lite-mha fp8", "fp8", 4224, 5),
        ("deepseek-v2-lite-mha bf16", "bf16", 8192, 2),
    ];
    assert_eq!(rows.len(), pairs.len() * 2, "4 pairs × (pp, tg)");
    // Preset-major, in the order given: the first row is the first (preset, dtype) pair.
    for (pair, (label, dtype, kv, max_batch)) in rows.chunks(2).zip(pairs) {
        for row in pair {
            assert_eq!(row["model"], label, "{row}");
            assert_eq!(row["kv_cache_dtype"], dtype, "{row}");
            assert_eq!(row["kv_bytes_per_token"].as_u64(), Some(kv), "{row}");
            assert_eq!(row["max_batch"].as_u64(), Some(max_batch), "{row}");
            assert_eq!(row["batch"].as_u64(), Some(max_batch), "{row}");
        }
    }
    let compare = report["compare"].as_array().unwrap();
    assert_eq!(compare.len(), 3 * 2, "3 other pairs × (pp, tg)");
    for c in compare {
        assert_eq!(c["baseline"], "deepseek-v2-lite fp8", "{c}");
        let (_, _, kv, max_batch) = pairs.iter().find(|p| c["other"] == p.0).unwrap();
        let ratio = |k: &str| c[k].as_f64().unwrap();
        assert!((ratio("kv_ratio") - *kv as f64 / 656.0).abs() < 1e-9, "{c}");
        assert!(
            (ratio("max_batch_ratio") - 32.0 / *max_batch as f64).abs() < 1e-9,
            "{c}"
        );
        assert_eq!(c["batch"], format!("max (32 vs {max_batch})"), "{c}");
    }
    // The target: MLA in FP8 fits at least 1.7× the sequences of MLA in bf16.
    let fp8_vs_bf16 = compare
        .iter()
        .find(|c| c["other"] == "deepseek-v2-lite bf16")
        .unwrap();
    assert!(fp8_vs_bf16["max_batch_ratio"].as_f64().unwrap() >= 1.7);
}

#[test]
fn kv_cache_dtype_list_refuses_a_cache_listed_twice() {
    for (dtypes, message) in [
        ("fp8,fp8", "--kv-cache-dtype lists fp8 twice"),
        // On the CPU `auto` is the f32 cache.
        (
            "auto,bf16,f32",
            "--kv-cache-dtype auto and f32 are the same f32 cache",
        ),
    ] {
        let out = mla(&[
            "bench",
            "--preset",
            "deepseek-v2-lite",
            "--layers",
            "1",
            "--kv-cache-dtype",
            dtypes,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && out.stdout.is_empty()
                && err.trim().lines().count() == 1
                && err.contains(message),
            "{dtypes}: {err}"
        );
    }
}
