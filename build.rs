//! Compiles every `kernels/**/*.cu` with nvcc into a fatbin (SASS for sm_80/86/89/90, PTX for
//! compute_90), embeds it, and writes `OUT_DIR/kernels.rs`: one `ModuleSpec` per file and one
//! typed handle per entry point (`RMS_NORM: ByDtype`, `ATTENTION_MMA_LATENT576_BF16: Kernel`),
//! numbered so the runtime caches functions by index.
//!
//! Entry points are read from each file run through the host C++ preprocessor with
//! cuda-emu's stand-in headers (as cuda-emu builds them), so the handles exist in CPU-only builds
//! too; where nvcc runs, its list must be the same. Directives a `.cu` file may carry:
//! `// mla: no-spills` (a ptxas spill fails the build), `// mla: sm_90a` (compiled for sm_90a
//! alone, loaded only on compute capability 9.0), `// mla: experimental` (built only with the
//! `experimental-kernels` feature, which also defines `MLA_EXPERIMENTAL_KERNELS`).
//!
//! nvcc is looked for in `$NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, `PATH`,
//! `/usr/local/cuda/bin`, then the toolchain `scripts/cuda-toolchain.sh` installs. Without nvcc
//! the crate builds CPU-only with a warning; `MLA_REQUIRE_CUDA=1` makes that an error.
//! `MLA_PTXAS_VERBOSE=1` prints ptxas' registers, spills and shared memory per kernel.

use std::collections::BTreeSet;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SASS_ARCHS: &[&str] = &["80", "86", "89", "90"];
const PTX_ARCH: &str = "90";
const EXPERIMENTAL_DEFINE: &str = "MLA_EXPERIMENTAL_KERNELS";

/// One `.cu` file: its module name (path under kernels/ with `/` as `_`) and directives.
struct Source {
    path: PathBuf,
    module: String,
    hopper_only: bool,
    no_spills: bool,
}

fn main() {
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "CXX",
        "MLA_REQUIRE_CUDA",
        "MLA_PTXAS_VERBOSE",
        "MLA_CUDA_TOOLCHAIN",
        "HOME",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cuda-emu/include");
    let experimental = env::var_os("CARGO_FEATURE_EXPERIMENTAL_KERNELS").is_some();
    let sources = kernel_sources(Path::new("kernels"), experimental);
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let require = env::var("MLA_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    let verbose = env::var("MLA_PTXAS_VERBOSE").is_ok_and(|v| v == "1");
    let defines: Vec<&str> = experimental
        .then_some(EXPERIMENTAL_DEFINE)
        .into_iter()
        .collect();

    let entries: Vec<Vec<String>> = sources
        .iter()
        .map(|s| entry_points(&s.path, &defines))
        .collect();
    let nvcc = find_nvcc();
    if nvcc.is_none() {
        if require {
            panic!(
                "MLA_REQUIRE_CUDA=1 but nvcc was not found ($NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin, \
                 PATH, /usr/local/cuda/bin, ~/.cache/mla-rt/cuda-13.0); run scripts/cuda-toolchain.sh"
            );
        }
        println!(
            "cargo:warning=nvcc not found: building without CUDA kernels (CPU only). \
             Run scripts/cuda-toolchain.sh and rebuild to get them."
        );
    }
    let mut fatbins = Vec::new();
    if let Some(nvcc) = &nvcc {
        for (source, names) in sources.iter().zip(&entries) {
            let fatbin = out_dir.join(format!("{}.fatbin", source.module));
            let compiled = compile(nvcc, source, &fatbin, &defines, verbose);
            let listed: BTreeSet<&String> = names.iter().collect();
            if compiled.iter().collect::<BTreeSet<_>>() != listed {
                panic!(
                    "{}: nvcc compiled the entry points {compiled:?}, the host preprocessor found \
                     {names:?}",
                    source.path.display()
                );
            }
            fatbins.push(fatbin);
        }
    }
    let version = nvcc.as_deref().map(nvcc_version);
    let shared = shared_sizes(&out_dir, &defines);
    let rs = generate(&sources, &entries, &shared, &fatbins, version.as_deref());
    fs::write(out_dir.join("kernels.rs"), rs).expect("write kernels.rs");
}

/// Every `.cu` under `dir` (sorted by path), skipping experimental files unless `experimental`.
fn kernel_sources(dir: &Path, experimental: bool) -> Vec<Source> {
    let mut paths = Vec::new();
    walk(dir, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .filter(|p| experimental || !has_directive(p, "// mla: experimental"))
        .map(|path| {
            let relative = path.strip_prefix(dir).expect("under kernels/");
            let module = relative
                .with_extension("")
                .to_string_lossy()
                .replace(std::path::MAIN_SEPARATOR, "_");
            Source {
                hopper_only: has_directive(&path, "// mla: sm_90a"),
                no_spills: has_directive(&path, "// mla: no-spills"),
                path,
                module,
            }
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    println!("cargo:rerun-if-changed={}", dir.display());
    for entry in fs::read_dir(dir).expect("kernels/ exists").flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
            out.push(path);
        }
    }
}

/// The `extern "C"` kernels of `source`, in order, as the host preprocessor expands its macros
/// with cuda-emu's headers (where `__global__` is `__attribute__((used))`).
fn entry_points(source: &Path, defines: &[&str]) -> Vec<String> {
    let (cxx, mut cmd) = host_compiler(defines);
    let out = cmd.args(["-E", "-P"]).arg(source).output().unwrap_or_else(|e| {
        panic!("build.rs reads the kernels' entry points with a C++ preprocessor; cannot run {cxx}: {e}")
    });
    if !out.status.success() {
        panic!(
            "{cxx} -E failed on {}:\n{}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
    let marker = "extern \"C\" __attribute__((used)) void";
    text.match_indices(marker)
        .map(|(i, _)| {
            let rest = text[i + marker.len()..].trim_start();
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// The host C++ compiler (`$CXX`, else the first of c++, g++, clang++ that runs) and the flags
/// that compile kernel headers with cuda-emu's stand-ins.
fn host_compiler(defines: &[&str]) -> (String, Command) {
    let runs = |cxx: &str| {
        Command::new(cxx)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let cxx = env::var("CXX")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| {
            ["c++", "g++", "clang++"]
                .into_iter()
                .find(|c| runs(c))
                .unwrap_or_else(|| {
                    panic!(
                        "build.rs needs a C++ compiler (c++, g++ or clang++, or $CXX) to read the \
                     kernels' entry points and shared-memory sizes"
                    )
                })
                .to_string()
        });
    let mut cmd = Command::new(&cxx);
    cmd.args(["-x", "c++", "-std=c++20", "-include", "cuda_emu.h"])
        .args(["-I", "cuda-emu/include", "-I", "cuda-emu", "-I", "kernels"]);
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    (cxx, cmd)
}

/// Each kernel's dynamic shared memory in bytes, by entry point: the sizeof of its
/// `MLA_SHARED_STORAGE` struct (kernels/attention/shared.cuh), from a host program that
/// includes the header with MLA_SHARED_PROBE and prints them.
fn shared_sizes(out_dir: &Path, defines: &[&str]) -> Vec<(String, usize)> {
    let probe_src = out_dir.join("shared_probe.cpp");
    let probe = out_dir.join("shared_probe");
    fs::write(
        &probe_src,
        "#define MLA_SHARED_PROBE 1\n#include <cstdio>\n#include \"attention/shared.cuh\"\n\
         int main() {\n    for (const auto& e : mla_probe::entries()) std::printf(\"%s %zu\\n\", e.name, e.bytes);\n}\n",
    )
    .expect("write shared_probe.cpp");
    let (cxx, mut cmd) = host_compiler(defines);
    let out = cmd
        .arg(&probe_src)
        .arg("-o")
        .arg(&probe)
        .output()
        .unwrap_or_else(|e| panic!("build.rs sizes the kernels' shared memory with a C++ compiler; cannot run {cxx}: {e}"));
    if !out.status.success() {
        panic!(
            "{cxx} failed on the shared-memory probe:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(&probe)
        .output()
        .expect("run the shared-memory probe");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, bytes)| (name.to_string(), bytes.parse().expect("a size")))
        .collect()
}

/// The Rust source of the module table and the kernel handles.
fn generate(
    sources: &[Source],
    entries: &[Vec<String>],
    shared: &[(String, usize)],
    fatbins: &[PathBuf],
    version: Option<&str>,
) -> String {
    let mut rs = String::new();
    rs += "pub const MODULES: &[ModuleSpec] = &[\n";
    for (i, s) in sources.iter().enumerate() {
        let fatbin = match fatbins.get(i) {
            Some(f) => format!("Some(include_bytes!({:?}))", f.display().to_string()),
            None => "None".into(),
        };
        let only_on = s.hopper_only.then_some((9, 0));
        writeln!(
            rs,
            "    ModuleSpec {{ name: {:?}, fatbin: {fatbin}, only_on: {only_on:?} }},",
            s.module
        )
        .unwrap();
    }
    rs += "];\n";
    let all: Vec<(usize, &String)> = entries
        .iter()
        .enumerate()
        .flat_map(|(m, names)| names.iter().map(move |n| (m, n)))
        .collect();
    writeln!(rs, "pub const KERNEL_COUNT: usize = {};", all.len()).unwrap();
    let index = |name: &str| all.iter().position(|(_, n)| *n == name);
    for (name, _) in shared {
        if index(name).is_none() {
            panic!("kernels/attention/shared.cuh sizes {name}, which no kernel file defines");
        }
    }
    let handle = |i: usize| {
        let (m, n) = all[i];
        let bytes = shared.iter().find(|(s, _)| s == n).map_or(0, |(_, b)| *b);
        format!("Kernel {{ module: {m}, index: {i}, name: {n:?}, shared_bytes: {bytes} }}")
    };
    for (i, (_, name)) in all.iter().enumerate() {
        let stem = name
            .strip_suffix("_f32")
            .or_else(|| name.strip_suffix("_bf16"));
        match stem
            .and_then(|s| Some((s, index(&format!("{s}_f32"))?, index(&format!("{s}_bf16"))?)))
        {
            // A templated kernel with both instantiations: one handle for the pair, written
            // once (at its f32 entry).
            Some((stem, f32_index, bf16_index)) if f32_index == i => writeln!(
                rs,
                "pub const {}: ByDtype = ByDtype {{ f32: {}, bf16: {} }};",
                stem.to_uppercase(),
                handle(f32_index),
                handle(bf16_index)
            )
            .unwrap(),
            Some(_) => {}
            None => writeln!(
                rs,
                "pub const {}: Kernel = {};",
                name.to_uppercase(),
                handle(i)
            )
            .unwrap(),
        }
    }
    rs += "/// Every entry point, by index.\npub const ALL: &[Kernel] = &[\n";
    for i in 0..all.len() {
        writeln!(rs, "    {},", handle(i)).unwrap();
    }
    rs += "];\n";
    writeln!(rs, "/// The nvcc that compiled them, if any.\npub const NVCC_VERSION: Option<&str> = {version:?};").unwrap();
    rs
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

/// Compiles `source` into `fatbin`; returns the entry points ptxas compiled.
fn compile(
    nvcc: &Path,
    source: &Source,
    fatbin: &Path,
    defines: &[&str],
    verbose: bool,
) -> BTreeSet<String> {
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
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    if source.hopper_only {
        cmd.args(["-gencode", "arch=compute_90a,code=sm_90a"]);
    } else {
        for arch in SASS_ARCHS {
            cmd.arg("-gencode")
                .arg(format!("arch=compute_{arch},code=sm_{arch}"));
        }
        cmd.arg("-gencode")
            .arg(format!("arch=compute_{PTX_ARCH},code=compute_{PTX_ARCH}"));
    }
    cmd.arg("-o").arg(fatbin).arg(&source.path);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    let log = String::from_utf8_lossy(&out.stderr);
    let path = source.path.display();
    if !out.status.success() {
        panic!("nvcc failed on {path}:\n{log}");
    }
    if verbose {
        for line in log
            .lines()
            .filter(|l| l.contains("ptxas info") || l.contains("spill"))
        {
            println!("cargo:warning={path}: {line}");
        }
    }
    if source.no_spills {
        if let Some(line) = log.lines().find(|l| {
            l.contains("spill") && !l.contains(" 0 bytes spill stores, 0 bytes spill loads")
        }) {
            panic!("{path} must not spill registers, ptxas says: {line}");
        }
    }
    let marker = "Compiling entry function '";
    log.lines()
        .filter_map(|l| l.split_once(marker))
        .filter_map(|(_, rest)| rest.split_once('\'').map(|(name, _)| name.to_string()))
        .collect()
}
