//! Compiles every `kernels/*.cu` with nvcc into a fatbin (sm_90 machine code and compute_90 PTX by
//! default; `CLOVER_CUDA_ARCHS=80,90` for other targets) and embeds them: `$OUT_DIR/kernels.rs`
//! defines `KERNELS: &[(file, image, entry points)]`, which `src/backend/cuda/` loads at run time.
//!
//! nvcc is looked for in `$NVCC`, `$CUDA_HOME/bin`, `PATH`, then `.cuda/nvidia/cu13/bin` (the pinned
//! pip wheels of DEVELOPERS.md). Without it the build still succeeds, warns once, and `KERNELS` is
//! empty: the CUDA backend then reports "built without CUDA kernels". `NVCC=none` builds without
//! kernels on purpose (CI checks that build too).
//!
//! With nvcc, a kernel that fails to compile or whose registers spill fails the build; ptxas's
//! report (registers, shared memory, spills per kernel) is written to `$OUT_DIR/ptxas-report.txt`
//! and printed as build warnings when `CLOVER_PTXAS_REPORT=1`.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernels_dir = root.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "PATH", "CLOVER_CUDA_ARCHS", "CLOVER_PTXAS_REPORT"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let mut sources: Vec<PathBuf> = fs::read_dir(&kernels_dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    sources.retain(|p| p.extension().is_some_and(|e| e == "cu"));
    sources.sort();

    let table = match find_nvcc(&root) {
        None => {
            println!("cargo:warning=nvcc not found ($NVCC, $CUDA_HOME/bin, PATH, .cuda/nvidia/cu13/bin): building without CUDA kernels");
            String::new()
        }
        Some(nvcc) => compile_all(&nvcc, &kernels_dir, &sources, &out),
    };
    let code = format!(
        "/// Kernel images compiled by build.rs: (file stem, fatbin, its kernels).\npub const KERNELS: &[(&str, &[u8], &[&str])] = &[{table}];\n"
    );
    fs::write(out.join("kernels.rs"), code).expect("write kernels.rs");
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Some(v) = env::var_os("NVCC") {
        if v == "none" || v.is_empty() {
            return None;
        }
        return Some(PathBuf::from(v));
    }
    let mut candidates = Vec::new();
    if let Some(home) = env::var_os("CUDA_HOME") {
        candidates.push(PathBuf::from(home).join("bin/nvcc"));
    }
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|d| d.join("nvcc")));
    }
    candidates.push(root.join(".cuda/nvidia/cu13/bin/nvcc"));
    candidates.into_iter().find(|p| p.is_file())
}

/// `-gencode` flags: machine code for every listed architecture, and PTX for the newest (so a
/// newer GPU can still JIT it).
fn gencode_flags() -> Vec<String> {
    let archs = env::var("CLOVER_CUDA_ARCHS").unwrap_or_else(|_| "90".into());
    let mut archs: Vec<String> = archs.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
    // By number: "100" is newer than "90" (the PTX goes to the newest).
    archs.sort_by_key(|a| a.trim_end_matches(|c: char| !c.is_ascii_digit()).parse::<u32>().unwrap_or(0));
    let mut flags: Vec<String> = archs.iter().map(|a| format!("-gencode=arch=compute_{a},code=sm_{a}")).collect();
    if let Some(newest) = archs.last() {
        flags.push(format!("-gencode=arch=compute_{newest},code=compute_{newest}"));
    }
    flags
}

/// Compiles each source; returns the `KERNELS` table entries.
fn compile_all(nvcc: &Path, kernels_dir: &Path, sources: &[PathBuf], out: &Path) -> String {
    let mut table = String::new();
    let mut report = String::new();
    let mut spills = Vec::new();
    for src in sources {
        let stem = src.file_stem().and_then(|s| s.to_str()).expect("kernel file names are UTF-8");
        let image = out.join(format!("{stem}.fatbin"));
        let output = Command::new(nvcc)
            .arg("-fatbin")
            .args(gencode_flags())
            .args(["-O3", "-Xptxas", "-v", "--std=c++17", "-Werror", "all-warnings"])
            .arg("-I")
            .arg(kernels_dir)
            .arg("-o")
            .arg(&image)
            .arg(src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
        let log = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            panic!("nvcc failed on {}:\n{log}", src.display());
        }
        let _ = writeln!(report, "== {stem}.cu\n{log}");
        spills.extend(spilling_kernels(stem, &log));
        let entries = entry_points(&log);
        let _ = write!(table, "(\"{stem}\", include_bytes!({:?}), &{entries:?}),", image.display().to_string());
    }
    fs::write(out.join("ptxas-report.txt"), &report).expect("write ptxas-report.txt");
    if env::var("CLOVER_PTXAS_REPORT").is_ok_and(|v| v == "1") {
        for line in report.lines().filter(|l| l.contains("Used") || l.contains("spill") || l.starts_with("==")) {
            println!("cargo:warning={line}");
        }
    }
    if !spills.is_empty() {
        panic!(
            "register spills (ptxas): {}\nfull report: {}",
            spills.join(", "),
            out.join("ptxas-report.txt").display()
        );
    }
    table
}

/// The kernels ptxas compiled ("Compiling entry function 'NAME' for 'sm_90'"), once each.
fn entry_points(log: &str) -> Vec<String> {
    let mut names: Vec<String> = log
        .lines()
        .filter_map(|l| l.split("entry function '").nth(1))
        .filter_map(|rest| rest.split('\'').next())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Kernels whose ptxas report shows spill stores or loads: ptxas prints "Compiling entry function
/// 'NAME'" then "N bytes spill stores, M bytes spill loads" for it.
fn spilling_kernels(file: &str, log: &str) -> Vec<String> {
    let mut current = String::new();
    let mut found = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("entry function '").nth(1) {
            current = rest.split('\'').next().unwrap_or("").to_string();
        }
        if line.contains("spill stores") {
            let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|t| t.parse().ok()).collect();
            // "S bytes stack frame, X bytes spill stores, Y bytes spill loads": the last two.
            if numbers.len() >= 2 && numbers[numbers.len() - 2..].iter().any(|&n| n > 0) {
                found.push(format!("{file}.cu:{current}"));
            }
        }
    }
    found
}
