//! Typed handles of the kernels build.rs compiled: one [`ModuleSpec`] per `kernels/**/*.cu`
//! file and one constant per entry point (`RMS_NORM: ByDtype` for a kernel built for f32 and
//! bf16, `ATTENTION_MMA_LATENT576_BF16: Kernel` for one built once), numbered across modules so
//! that the device caches each function by its index. The handles exist in every build; a
//! build without nvcc has no fatbins, and the device refuses to open.

use super::GpuFloat;

/// A kernel module: one `.cu` file's fatbin.
#[derive(Debug)]
pub struct ModuleSpec {
    /// The file's path under `kernels/` with `/` as `_` (`attention_mma`).
    pub name: &'static str,
    /// None where nvcc was not found at build time.
    pub fatbin: Option<&'static [u8]>,
    /// The only compute capability that can load it, if it is built for one (sm_90a).
    pub only_on: Option<(i32, i32)>,
}

/// One entry point: its module (an index into [`MODULES`]) and its index among all entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    pub module: usize,
    pub index: usize,
    pub name: &'static str,
    /// Its dynamic shared memory: the sizeof of its `NAME_shared` struct (0 for none).
    pub shared_bytes: usize,
}

/// The f32 and bf16 builds of one templated kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByDtype {
    pub f32: Kernel,
    pub bf16: Kernel,
}

impl ByDtype {
    /// The build for element type `T`.
    pub fn of<T: GpuFloat>(self) -> Kernel {
        match T::BF16 {
            true => self.bf16,
            false => self.f32,
        }
    }
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_numbered_in_order_and_name_their_module() {
        assert_eq!(ALL.len(), KERNEL_COUNT);
        for (i, k) in ALL.iter().enumerate() {
            assert_eq!(k.index, i, "{k:?}");
            assert!(k.module < MODULES.len(), "{k:?}");
            assert_eq!(ALL.iter().filter(|o| o.name == k.name).count(), 1, "{k:?}");
        }
        let name = |m: usize| MODULES[m].name;
        assert_eq!(name(RMS_NORM.f32.module), "elementwise");
        assert_eq!(RMS_NORM.bf16.name, "rms_norm_bf16");
        assert_eq!(name(ATTENTION_MMA_LATENT576_BF16.module), "attention_mma");
        assert_eq!(name(ATTENTION_COMBINE_BF16.module), "attention_combine");
        assert_eq!(ALL[ATTENTION_COMBINE_BF16.index], ATTENTION_COMBINE_BF16);
        assert_eq!(ByDtype::of::<f32>(PAGED_ATTENTION), PAGED_ATTENTION.f32);
        assert_eq!(
            ByDtype::of::<half::bf16>(PAGED_ATTENTION),
            PAGED_ATTENTION.bf16
        );
        // Shared memory: the struct's size for a kernel that has one, none for the others.
        assert_eq!(ATTENTION_MMA_LATENT576_BF16.shared_bytes, 86_528);
        assert_eq!(RMS_NORM.f32.shared_bytes, 0);
    }
}
