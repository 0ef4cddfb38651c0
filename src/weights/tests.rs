use super::*;
use safetensors::tensor::TensorView;

fn write(dir: &Path, file: &str, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(dir.join(file), safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn reads_f32_bf16_f16_as_f32() {
    let dir = tempfile::tempdir().unwrap();
    let values = [1.5f32, -2.0, 0.25, 3.0];
    let bf: Vec<u8> = values
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
        .collect();
    let hf: Vec<u8> = values
        .iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect();
    write(
        dir.path(),
        "model.safetensors",
        &[
            ("a", Dtype::F32, vec![2, 2], f32_bytes(&values)),
            ("b", Dtype::BF16, vec![4], bf),
            ("c", Dtype::F16, vec![1, 4], hf),
        ],
    );
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.load("a", &[2, 2]).unwrap().data, values);
    assert_eq!(ck.load("b", &[4]).unwrap().data, values);
    assert_eq!(ck.load("c", &[1, 4]).unwrap().data, values);
}

#[test]
fn sharded_checkpoints_follow_the_index() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "part-1.safetensors",
        &[("x", Dtype::F32, vec![1], f32_bytes(&[1.0]))],
    );
    write(
        dir.path(),
        "part-2.safetensors",
        &[("y", Dtype::F32, vec![2], f32_bytes(&[2.0, 3.0]))],
    );
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"metadata": {}, "weight_map": {"x": "part-1.safetensors", "y": "part-2.safetensors"}}"#,
    )
    .unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.load("y", &[2]).unwrap().data, [2.0, 3.0]);
    assert_eq!(ck.load("x", &[1]).unwrap().data, [1.0]);
}

#[test]
fn errors_name_the_tensor_and_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "model.safetensors",
        &[
            ("w", Dtype::F32, vec![2, 3], f32_bytes(&[0.0; 6])),
            ("scales", Dtype::I8, vec![4], vec![0u8; 4]),
        ],
    );
    let ck = Checkpoint::open(dir.path()).unwrap();
    let shape = ck.load("w", &[3, 2]).unwrap_err().to_string();
    assert_eq!(shape, "tensor w has shape [2, 3], expected [3, 2]");
    let missing = ck.load("nope", &[1]).unwrap_err().to_string();
    assert!(missing.starts_with("tensor nope is missing"), "{missing}");
    let dtype = ck.load("scales", &[4]).unwrap_err().to_string();
    assert!(
        dtype.starts_with("unsupported dtype I8 in tensor scales"),
        "{dtype}"
    );
}

#[test]
fn truncated_files_are_rejected_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "model.safetensors",
        &[("w", Dtype::F32, vec![64], f32_bytes(&[1.0; 64]))],
    );
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for keep in [4, 20, bytes.len() - 8] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let err = Checkpoint::open(dir.path())
            .err()
            .expect("truncated file must fail")
            .to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("truncated"),
            "{keep}: {err}"
        );
    }
}

#[test]
fn index_pointing_at_a_missing_shard_names_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {"x": "gone.safetensors"}}"#,
    )
    .unwrap();
    let err = Checkpoint::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("gone.safetensors"), "{err}");
}

#[test]
fn index_shards_outside_the_folder_are_refused() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    // A shard that exists, but outside the model folder: never opened.
    std::fs::write(outer.path().join("x.safetensors"), b"not read").unwrap();
    let outside = outer.path().join("x.safetensors");
    for file in [
        "../x.safetensors",
        "sub/../../x.safetensors",
        outside.to_str().unwrap(),
        "",
        ".",
    ] {
        let index = serde_json::json!({"weight_map": {"model.embed.weight": file}});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let err = Checkpoint::open(&dir).err().unwrap().to_string();
        assert!(
            err.contains("model.safetensors.index.json")
                && err.contains("not a path inside the model folder")
                && err.contains("model.embed.weight"),
            "{file:?}: {err}"
        );
    }
}

/// A 130 × 3 F8_E4M3 matrix `w` of ones in 128 × 128 blocks (a 2 × 1 scale grid: the second row
/// of blocks holds two rows), with `scales` as `w_scale_inv` and `quantization` in config.json.
fn fp8_checkpoint(scales: &[(Vec<usize>, Vec<f32>)], quantization: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let one = crate::util::e4m3::f32_to_e4m3(1.0);
    let mut tensors = vec![(
        "w".to_string(),
        Dtype::F8_E4M3,
        vec![130, 3],
        vec![one; 390],
    )];
    for (i, (shape, values)) in scales.iter().enumerate() {
        let name = if i == 0 { "w_scale_inv" } else { "other" };
        tensors.push((
            name.to_string(),
            Dtype::F32,
            shape.clone(),
            f32_bytes(values),
        ));
    }
    let views: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    write(dir.path(), "model.safetensors", &views);
    std::fs::write(
        dir.path().join("config.json"),
        format!("{{\"model_type\": \"deepseek_v3\", {quantization}}}"),
    )
    .unwrap();
    dir
}

const FP8_CONFIG: &str = r#""quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}"#;

#[test]
fn fp8_matrices_are_dequantized_by_block_from_the_top_left() {
    let dir = fp8_checkpoint(&[(vec![2, 1], vec![0.5, 3.0])], FP8_CONFIG);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let w = ck.load("w", &[130, 3]).unwrap().data;
    assert!(w[..128 * 3].iter().all(|&v| v == 0.5));
    assert!(
        w[128 * 3..].iter().all(|&v| v == 3.0),
        "the partial last block"
    );
}

#[test]
fn fp8_scale_errors_name_both_tensors() {
    let wrong = fp8_checkpoint(&[(vec![1, 1], vec![1.0])], FP8_CONFIG);
    let err = Checkpoint::open(wrong.path())
        .unwrap()
        .load("w", &[130, 3])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tensor w_scale_inv has shape [1, 1], but w (130 × 3 in blocks of 128 × 128) needs [2, 1]"),
        "{err}"
    );
    let missing = fp8_checkpoint(&[], FP8_CONFIG);
    let err = Checkpoint::open(missing.path())
        .unwrap()
        .load("w", &[130, 3])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tensor w is F8_E4M3, but its block scales w_scale_inv are missing"),
        "{err}"
    );
    let unquantized = fp8_checkpoint(&[(vec![2, 1], vec![1.0, 1.0])], "\"x\": 1");
    let err = Checkpoint::open(unquantized.path())
        .unwrap()
        .load("w", &[130, 3])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no quantization_config"), "{err}");
    for (config, key) in [
        (
            r#""quantization_config": {"quant_method": "awq"}"#,
            "quant_method",
        ),
        (
            r#""quantization_config": {"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128, 128]}"#,
            "fmt",
        ),
        (
            r#""quantization_config": {"quant_method": "fp8"}"#,
            "weight_block_size",
        ),
        (
            r#""quantization_config": {"quant_method": "fp8", "weight_block_size": [0, 128]}"#,
            "weight_block_size",
        ),
    ] {
        let dir = fp8_checkpoint(&[(vec![2, 1], vec![1.0, 1.0])], config);
        let err = Checkpoint::open(dir.path())
            .err()
            .expect(config)
            .to_string();
        assert!(err.contains(&format!("quantization_config.{key}")), "{err}");
    }
}
