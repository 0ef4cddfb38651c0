// The CUDA issue compiles kernels/*.cu with nvcc here; until then the crate is CPU-only and the
// build only has to notice kernel changes.
fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
}
