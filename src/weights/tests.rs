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
            ("scales", Dtype::F8_E4M3, vec![4], vec![0u8; 4]),
        ],
    );
    let ck = Checkpoint::open(dir.path()).unwrap();
    let shape = ck.load("w", &[3, 2]).unwrap_err().to_string();
    assert_eq!(shape, "tensor w has shape [2, 3], expected [3, 2]");
    let missing = ck.load("nope", &[1]).unwrap_err().to_string();
    assert!(missing.starts_with("tensor nope is missing"), "{missing}");
    let dtype = ck.load("scales", &[4]).unwrap_err().to_string();
    assert!(
        dtype.starts_with("unsupported dtype F8_E4M3 in tensor scales"),
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
