//! Compiles `kernels/*.cu` with nvcc into fatbins (SASS for sm_80/86/89/90, PTX for
//! compute_90) and embeds them: `OUT_DIR/kernels.rs` lists `(module name, fatbin bytes)`.
//!
//! nvcc is looked for in `$NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, `PATH`,
//! `/usr/local/cuda/bin`, then the toolchain `scripts/cuda-toolchain.sh` installs. Without nvcc
//! the crate builds CPU-only with a warning; `MLA_REQUIRE_CUDA=1` makes that an error.
//! `MLA_PTXAS_VERBOSE=1` prints ptxas' registers, spills and shared memory per kernel.
//! A kernel file that contains the line `// mla: no-spills` fails the build if ptxas reports a
//! spill in it; one with the line `// mla: sm_90a` (Hopper-only instructions such as wgmma) is
//! compiled for sm_90a alone and listed as needing compute capability 9.0.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SASS_ARCHS: &[&str] = &["80", "86", "89", "90"];
const PTX_ARCH: &str = "90";

fn main() {
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "MLA_REQUIRE_CUDA",
        "MLA_PTXAS_VERBOSE",
        "MLA_CUDA_TOOLCHAIN",
        "HOME",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    let kernel_dir = Path::new("kernels");
    let mut sources: Vec<PathBuf> = Vec::new();
    let mut headers: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(kernel_dir).expect("kernels/ exists").flatten() {
        let path = entry.path();
        println!("cargo:rerun-if-changed={}", path.display());
        match path.extension().and_then(|e| e.to_str()) {
            Some("cu") => sources.push(path),
            Some("cuh") => headers.push(path),
            _ => {}
        }
    }
    sources.sort();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let require = env::var("MLA_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    let verbose = env::var("MLA_PTXAS_VERBOSE").is_ok_and(|v| v == "1");

    let mut modules = Vec::new();
    let mut version = None;
    match find_nvcc() {
        None if require => panic!(
            "MLA_REQUIRE_CUDA=1 but nvcc was not found ($NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin, PATH, \
             /usr/local/cuda/bin, ~/.cache/mla-rt/cuda-13.0); run scripts/cuda-toolchain.sh"
        ),
        None => println!(
            "cargo:warning=nvcc not found: building without CUDA kernels (CPU only). \
             Run scripts/cuda-toolchain.sh and rebuild to get them."
        ),
        Some(nvcc) => {
            version = Some(nvcc_version(&nvcc));
            for source in &sources {
                let name = source.file_stem().unwrap().to_string_lossy().to_string();
                let fatbin = out_dir.join(format!("{name}.fatbin"));
                let hopper_only = has_directive(source, "// mla: sm_90a");
                compile(&nvcc, source, &fatbin, verbose, hopper_only);
                modules.push((name, fatbin, hopper_only.then_some((9, 0))));
            }
        }
    }
    let mut rs = String::from(
        "/// A kernel module compiled by build.rs.\npub struct KernelModule {\n    pub name: &'static str,\n    \
         pub fatbin: &'static [u8],\n    /// The only compute capability that can load it, if it is built for one.\n    \
         pub only_on: Option<(i32, i32)>,\n}\npub const MODULES: &[KernelModule] = &[\n",
    );
    for (name, fatbin, only_on) in &modules {
        rs += &format!(
            "    KernelModule {{ name: {name:?}, fatbin: include_bytes!({:?}), only_on: {only_on:?} }},\n",
            fatbin.display().to_string()
        );
    }
    rs += "];\n";
    rs += &format!("/// The nvcc that compiled them, if any.\npub const NVCC_VERSION: Option<&str> = {version:?};\n");
    fs::write(out_dir.join("kernels.rs"), rs).expect("write kernels.rs");
}

fn find_nvcc() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(nvcc) = env::var_os("NVCC") {
        candidates.push(nvcc.into());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(dir) = env::var_os(var) {
            candidates.push(Path::new(&dir).join("bin/nvcc"));
        }
    }
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|d| d.join("nvcc")));
    }
    candidates.push("/usr/local/cuda/bin/nvcc".into());
    let toolchain = env::var_os("MLA_CUDA_TOOLCHAIN")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cache/mla-rt/cuda-13.0")));
    if let Some(dir) = toolchain {
        candidates.push(dir.join("nvidia/cu13/bin/nvcc"));
    }
    candidates.into_iter().find(|c| c.is_file())
}

fn nvcc_version(nvcc: &Path) -> String {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .expect("run nvcc --version");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains("release"))
        .unwrap_or("unknown")
        .trim()
        .to_string()
}

/// Whether `source` has the line `directive`.
fn has_directive(source: &Path, directive: &str) -> bool {
    fs::read_to_string(source)
        .unwrap_or_default()
        .lines()
        .any(|l| l.trim() == directive)
}

fn compile(nvcc: &Path, source: &Path, fatbin: &Path, verbose: bool, hopper_only: bool) {
    let mut cmd = Command::new(nvcc);
    cmd.args([
        "-fatbin",
        "-O3",
        "-std=c++17",
        "-Xptxas",
        "-v",
        "-I",
        "kernels",
    ]);
    if hopper_only {
        cmd.args(["-gencode", "arch=compute_90a,code=sm_90a"]);
    } else {
        for arch in SASS_ARCHS {
            cmd.arg("-gencode")
                .arg(format!("arch=compute_{arch},code=sm_{arch}"));
        }
        cmd.arg("-gencode")
            .arg(format!("arch=compute_{PTX_ARCH},code=compute_{PTX_ARCH}"));
    }
    cmd.arg("-o").arg(fatbin).arg(source);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        panic!("nvcc failed on {}:\n{log}", source.display());
    }
    if verbose {
        for line in log
            .lines()
            .filter(|l| l.contains("ptxas info") || l.contains("spill"))
        {
            println!("cargo:warning={}: {line}", source.display());
        }
    }
    if has_directive(source, "// mla: no-spills") {
        if let Some(line) = log.lines().find(|l| {
            l.contains("spill") && !l.contains(" 0 bytes spill stores, 0 bytes spill loads")
        }) {
            panic!(
                "{} must not spill registers, ptxas says: {line}",
                source.display()
            );
        }
    }
}
