//! The FP8 cache rows mla-rt writes are byte for byte the ones PyTorch writes with FlashMLA's
//! quantizer (`scripts/fixtures/make_fp8_cache_pages.py`): tile and head scales, e4m3 rounding,
//! the bf16 RoPE tail, a partial last tile, an all-zero tile and an outlier.

mod common;

use mla_rt::kv::cache_dtype::Fp8Layout;
use mla_rt::kv::fp8_layout::{MhaFp8Layout, MlaFp8Layout};
use serde_json::Value;

#[test]
fn cache_rows_match_pytorchs_bytes() {
    let path = common::fixtures_dir().join("fp8-cache").join("pages.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let n = |key: &str| case[key].as_u64().unwrap() as usize;
        let layout = match case["kind"].as_str().unwrap() {
            "mla" => Fp8Layout::Mla(MlaFp8Layout {
                latent: n("latent"),
                rope: n("rope"),
            }),
            _ => Fp8Layout::Mha(MhaFp8Layout {
                kv_heads: n("kv_heads"),
                head_dim: n("head_dim"),
            }),
        };
        let bytes_per_token = layout.bytes_per_token();
        for (t, (values, want)) in case["values"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["bytes"].as_array().unwrap())
            .enumerate()
        {
            let values: Vec<f32> = values
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let want: Vec<u8> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect();
            assert_eq!(want.len(), bytes_per_token);
            let mut got = vec![0u8; bytes_per_token];
            layout.quantize(&values, &mut got);
            let first = got.iter().zip(&want).position(|(g, w)| g != w);
            assert_eq!(
                first, None,
                "{} token {t}: first differing byte",
                case["kind"]
            );
            // Dequantized values are within e4m3's precision of the input.
            let mut back = vec![f32::NAN; values.len()];
            layout.dequantize(&got, &mut back);
            let err = values
                .iter()
                .zip(&back)
                .map(|(v, b)| (v - b).abs() / v.abs().max(1e-3))
                .fold(0.0f32, f32::max);
            assert!(err.is_finite(), "{} token {t}", case["kind"]);
        }
    }
}
