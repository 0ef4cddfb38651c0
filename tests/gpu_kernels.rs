//! Each CUDA kernel against the CPU backend on fresh random inputs of odd sizes, with outputs
//! poisoned (NaN) before the kernel writes them. Needs an NVIDIA GPU: ignored elsewhere.
//!
//! `cargo test --test gpu_kernels -- --ignored` on a GPU machine.

mod common;

use common::Rng;
use mla_rt::backend::cpu::CpuBackend;
use mla_rt::backend::cuda::{CudaDevice, GpuFloat};
use mla_rt::backend::Backend;
use mla_rt::config::{RopeConfig, RopeScaling};
use mla_rt::ops::rope::Rope;
use mla_rt::weights::HostTensor;

fn device() -> CudaDevice {
    CudaDevice::open(0).expect("an NVIDIA GPU with kernels in this build")
}

fn random(rng: &mut Rng, rows: usize, cols: usize) -> HostTensor {
    HostTensor::new(vec![rows, cols], rng.normals(rows * cols, 1.0))
}

/// Relative L2 error; NaN (an element the kernel never wrote) counts as infinitely wrong.
fn rel_err(got: &HostTensor, want: &HostTensor) -> f64 {
    assert_eq!(got.data.len(), want.data.len());
    let num: f64 = got
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let den: f64 = want
        .data
        .iter()
        .map(|b| (*b as f64).powi(2))
        .sum::<f64>()
        .max(1e-30);
    let e = (num / den).sqrt();
    if e.is_nan() {
        f64::INFINITY
    } else {
        e
    }
}

/// Rounds through the storage type, so the CPU reference sees what the GPU stores.
fn stored<T: GpuFloat>(t: &HostTensor) -> HostTensor {
    HostTensor::new(
        t.shape.clone(),
        t.data.iter().map(|&v| T::from_f32(v).to_f32()).collect(),
    )
}

fn tolerance<T: GpuFloat>() -> f64 {
    if T::SUFFIX == "f32" {
        1e-5
    } else {
        2e-2
    }
}

/// Odd widths (rows off 16-byte alignment: element by element) and widths of whole 16-byte
/// packs (every row vectorised).
fn row_ops<T: GpuFloat>(dev: &CudaDevice) {
    row_ops_of_shape::<T>(dev, 37, 333);
    row_ops_of_shape::<T>(dev, 21, 264);
}

fn row_ops_of_shape<T: GpuFloat>(dev: &CudaDevice, rows: usize, cols: usize) {
    let mut rng = Rng::new(7 + cols as u64);
    let x = stored::<T>(&random(&mut rng, rows, cols));
    let w = stored::<T>(&HostTensor::new(vec![cols], rng.normals(cols, 0.5)));
    // RMSNorm into a poisoned output.
    let (gx, gw) = (dev.upload::<T>(&x).unwrap(), dev.upload::<T>(&w).unwrap());
    let mut out = dev.poisoned::<T>(rows, cols).unwrap();
    dev.rms_norm(&mut out, &gx, &gw, 1e-6).unwrap();
    let want = CpuBackend::EXACT
        .rms_norm(&x, &w.clone().into(), 1e-6)
        .unwrap();
    let err = rel_err(&dev.download(&out).unwrap(), &want);
    assert!(err <= tolerance::<T>(), "rms_norm {}: {err:e}", T::SUFFIX);

    // Residual add, bias add, SiLU-and-mul.
    let y = stored::<T>(&random(&mut rng, rows, cols));
    let mut gsum = dev.upload::<T>(&x).unwrap();
    dev.add_assign(&mut gsum, &dev.upload::<T>(&y).unwrap())
        .unwrap();
    let mut want = x.clone();
    CpuBackend::EXACT.add_assign(&mut want, &y).unwrap();
    assert!(rel_err(&dev.download(&gsum).unwrap(), &want) <= tolerance::<T>());
    dev.add_bias(&mut gsum, &gw).unwrap();
    CpuBackend::EXACT
        .add_bias(&mut want, &w.clone().into())
        .unwrap();
    assert!(rel_err(&dev.download(&gsum).unwrap(), &want) <= tolerance::<T>());
    let mut gate = dev.upload::<T>(&x).unwrap();
    dev.silu_mul(&mut gate, &dev.upload::<T>(&y).unwrap())
        .unwrap();
    let want: Vec<f32> = x
        .data
        .iter()
        .zip(&y.data)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    let err = rel_err(
        &dev.download(&gate).unwrap(),
        &HostTensor::new(vec![rows, cols], want),
    );
    assert!(err <= tolerance::<T>(), "silu_mul {}: {err:e}", T::SUFFIX);

    // The fused residual add + RMSNorm: both the updated residual and the norm.
    let mut gres = dev.upload::<T>(&x).unwrap();
    let mut gnorm = dev.poisoned::<T>(rows, cols).unwrap();
    dev.add_rms_norm(
        &mut gres,
        &dev.upload::<T>(&y).unwrap(),
        &mut gnorm,
        &gw,
        1e-6,
    )
    .unwrap();
    let mut res = x.clone();
    let want = CpuBackend::EXACT
        .add_rms_norm(&mut res, &y, &w.clone().into(), 1e-6)
        .unwrap();
    let err = rel_err(&dev.download(&gres).unwrap(), &res);
    assert!(
        err <= tolerance::<T>(),
        "add_rms_norm residual {}: {err:e}",
        T::SUFFIX
    );
    let err = rel_err(&dev.download(&gnorm).unwrap(), &want);
    assert!(
        err <= tolerance::<T>(),
        "add_rms_norm {}: {err:e}",
        T::SUFFIX
    );

    // Embedding gather into a poisoned output; an id past the vocabulary is refused.
    let ids: Vec<u32> = (0..13).map(|i| (i * 7 % rows) as u32).collect();
    let mut emb = dev.poisoned::<T>(ids.len(), cols).unwrap();
    dev.embedding(&mut emb, &gx, &ids).unwrap();
    assert_eq!(
        dev.download(&emb).unwrap(),
        CpuBackend::EXACT
            .embedding(&x.clone().into(), &ids)
            .unwrap()
    );
    assert!(dev.embedding(&mut emb, &gx, &[rows as u32]).is_err());
}

fn rope_ops<T: GpuFloat>(dev: &CudaDevice) {
    let mut rng = Rng::new(8);
    for interleaved in [true, false] {
        let config = RopeConfig {
            theta: 10000.0,
            scaling: RopeScaling::None,
            interleaved,
            softmax_mscale: None,
        };
        let rope = Rope::new(&config, 64);
        let positions: Vec<u32> = (0..19).map(|i| i * 97 % 4096).collect();
        let table = rope.table(&positions, &vec![4096; positions.len()]);
        let cos_sin = dev.rope_table(&table).unwrap();
        // q: 5 heads of 192 (nope 128 + rope 64).
        let q = stored::<T>(&random(&mut rng, 19, 5 * 192));
        let mut gq = dev.upload::<T>(&q).unwrap();
        dev.rope(&mut gq, &table, &cos_sin, 5, 192, 128).unwrap();
        let mut want = q.clone();
        CpuBackend::EXACT
            .rope(&mut want, &table, 5, 192, 128)
            .unwrap();
        let err = rel_err(&dev.download(&gq).unwrap(), &want);
        assert!(
            err <= tolerance::<T>(),
            "rope {} interleaved={interleaved}: {err:e}",
            T::SUFFIX
        );
        // Latent epilogue: 512 latent + 64 rope.
        let ckv = stored::<T>(&random(&mut rng, 19, 576));
        let norm = stored::<T>(&HostTensor::new(vec![512], rng.normals(512, 0.3)));
        let mut g = dev.upload::<T>(&ckv).unwrap();
        dev.latent_epilogue(
            &mut g,
            &dev.upload::<T>(&norm).unwrap(),
            1e-6,
            &table,
            &cos_sin,
        )
        .unwrap();
        let mut want = ckv.clone();
        CpuBackend::EXACT
            .latent_epilogue(&mut want, &norm.clone().into(), 1e-6, &table)
            .unwrap();
        let err = rel_err(&dev.download(&g).unwrap(), &want);
        assert!(
            err <= tolerance::<T>(),
            "latent_epilogue {}: {err:e}",
            T::SUFFIX
        );
    }
}

fn cache_ops<T: GpuFloat>(dev: &CudaDevice) {
    let mut rng = Rng::new(9);
    let (layers, blocks, block_size, width) = (2, 7, 16, 576);
    let block_elems = block_size * width;
    // One layer of `blocks` blocks, poisoned: slots nobody writes must stay NaN.
    let mut layer = dev.poisoned::<T>(blocks, block_elems).unwrap();
    let x = stored::<T>(&random(&mut rng, 21, 600));
    let slots: Vec<u32> = (0..21)
        .map(|i| ((i * 37) % (blocks * block_size)) as u32)
        .collect();
    dev.write_kv_cache(
        &mut layer.data.slice_mut(..),
        width,
        &dev.upload::<T>(&x).unwrap(),
        24,
        &slots,
        &dev.step_values(("test slots", 0), &slots).unwrap(),
    )
    .unwrap();
    let got = dev.download(&layer).unwrap();
    for (i, &s) in slots.iter().enumerate() {
        let s = s as usize;
        assert_eq!(
            &got.data[s * width..(s + 1) * width],
            &x.data[i * 600 + 24..i * 600 + 24 + width]
        );
    }
    let untouched = (0..blocks * block_size)
        .find(|s| !slots.contains(&(*s as u32)))
        .unwrap();
    assert!(got.data[untouched * width..(untouched + 1) * width]
        .iter()
        .all(|v| v.is_nan()));
    // Copy-on-write block copies in every layer of a [layers][blocks][block] cache.
    let filled = stored::<T>(&random(&mut rng, layers * blocks, block_elems));
    let mut cache = dev.upload::<T>(&filled).unwrap();
    dev.copy_blocks(&mut cache.data, layers, block_elems, &[(1, 5), (6, 0)])
        .unwrap();
    let got = dev.download(&cache).unwrap();
    for l in 0..layers {
        let block = |b: usize| {
            &filled.data[(l * blocks + b) * block_elems..(l * blocks + b + 1) * block_elems]
        };
        let got_block = |b: usize| {
            &got.data[(l * blocks + b) * block_elems..(l * blocks + b + 1) * block_elems]
        };
        assert_eq!(got_block(5), block(1));
        assert_eq!(got_block(0), block(6));
        assert_eq!(got_block(2), block(2));
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn elementwise_kernels_match_the_cpu_backend_f32() {
    let dev = device();
    row_ops::<f32>(&dev);
    rope_ops::<f32>(&dev);
    cache_ops::<f32>(&dev);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn elementwise_kernels_match_the_cpu_backend_bf16() {
    let dev = device();
    row_ops::<half::bf16>(&dev);
    rope_ops::<half::bf16>(&dev);
    cache_ops::<half::bf16>(&dev);
}

/// Without a GPU (or without kernels in the build) opening a device is an error value with one
/// sentence, never a panic; with one it succeeds.
#[test]
fn opening_a_device_never_panics() {
    match CudaDevice::open(0) {
        Ok(dev) => assert!(dev.info.compute_capability.0 >= 8),
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with("device: ") && !message.contains('\n'),
                "{message}"
            );
        }
    }
    assert!(CudaDevice::open(999).is_err());
}
