//! The CUDA build and the GPU check folder (../shared/cuda.md has the recipe).
//!
//! - `cargo xtask cuda-build [--no-cudnn]`: installs what is missing of the CUDA 13.0 toolkit
//!   (PyPI, into `~/.local/cuda13`) and of cuDNN 9 (PyPI, into `~/.local/cudnn`, linked into
//!   the toolkit), checks for the driver library `libcuda.so` (Debian's `libcuda1`; only told
//!   how to install, since it needs apt), builds `temper` with `--features cudnn` (or `cuda`)
//!   for compute capability 9.0 (`CUDA_COMPUTE_CAP`, default 90) into `target/cuda`, and
//!   writes the stripped, xz-compressed binary `target/cuda/temper-cuda.xz`.
//! - `cargo xtask gpu-check [--no-build]`: builds (unless `--no-build`) and fills
//!   `target/gpu-check/` with the compressed binary, the PyTorch reference script, a trained
//!   small-cnn, `run.sh` and `summarize.py`; then checks on this machine what can be checked
//!   without a GPU (script syntax, the packaged binary's `info` and its `gpu-check` on the
//!   CPU). Copy the folder to the GPU machine and run `bash run.sh` there.

use crate::{cargo, root, run};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The CUDA 13.0 toolkit from PyPI: the GPU machines' driver and libraries are CUDA 13.0.
const CUDA_PACKAGES: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.*",
    "nvidia-nvvm==13.0.*",
    "nvidia-cuda-cccl==13.0.*",
    "nvidia-cuda-runtime==13.0.*",
    "nvidia-cuda-crt==13.0.*",
    "nvidia-cublas==13.1.*",
    "nvidia-curand",
    // candle links cudarc's NVRTC (`-lnvrtc`); the nvcc wheel does not ship it.
    "nvidia-cuda-nvrtc==13.0.*",
];

/// cuDNN 9 for CUDA 13, installed into its own target directory.
const CUDNN_PACKAGE: &str = "nvidia-cudnn-cu13";

/// Where the driver library may be; linking needs `libcuda.so`.
const LIBCUDA: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libcuda.so",
    "/usr/lib64/libcuda.so",
    "/usr/lib/libcuda.so",
    "/usr/local/cuda/lib64/stubs/libcuda.so",
];

fn home() -> Result<PathBuf> {
    Ok(PathBuf::from(std::env::var("HOME").context("HOME is not set")?))
}

fn python() -> String {
    std::env::var("TEMPER_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `pip install --no-deps --target` into a fresh folder, then merged into `dir`: pip will not
/// add files to a `--target` whose top-level folder (`nvidia/`) exists, and `--upgrade` would
/// replace it whole.
fn pip_install(dir: &Path, packages: &[&str]) -> Result<()> {
    eprintln!("installing {} into {}", packages.join(" "), dir.display());
    let staging = dir.with_extension("pip-staging");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("cannot clear {}", staging.display()))?;
    }
    run(Command::new(python())
        .args(["-m", "pip", "install", "--no-deps", "--target"])
        .arg(&staging)
        .args(packages))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    run(Command::new("cp").arg("-a").arg(staging.join(".")).arg(dir))?;
    std::fs::remove_dir_all(&staging).with_context(|| format!("cannot remove {}", staging.display()))
}

/// Makes `link` a symbolic link to `target` (as `ln -sf`), unless it already is one.
fn symlink(target: &Path, link: &Path) -> Result<()> {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link).with_context(|| format!("cannot replace {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("cannot link {} -> {}", link.display(), target.display()))
}

/// The toolkit directory (`.../nvidia/cu13`), with what is missing installed and linked.
fn toolkit(cudnn: bool) -> Result<PathBuf> {
    let base = home()?.join(".local/cuda13");
    let c = base.join("nvidia/cu13");
    // One file of each package: whatever is missing is installed (pip skips the rest).
    let needed = [
        "bin/nvcc",
        "lib/libnvrtc.so.13",
        "lib/libcublas.so.13",
        "lib/libcurand.so.10",
    ];
    if needed.iter().any(|f| !c.join(f).exists()) {
        pip_install(&base, CUDA_PACKAGES)?;
    }
    if let Some(f) = needed.iter().find(|f| !c.join(f).exists()) {
        bail!("no {} under {} after installing the CUDA toolkit", f, c.display());
    }
    let lib = c.join("lib");
    for n in ["cublas", "cublasLt", "cudart", "nvrtc"] {
        symlink(
            Path::new(&format!("lib{n}.so.13")),
            &lib.join(format!("lib{n}.so")),
        )?;
    }
    symlink(Path::new("libcurand.so.10"), &lib.join("libcurand.so"))?;
    if cudnn {
        let dbase = home()?.join(".local/cudnn");
        let d = dbase.join("nvidia/cudnn");
        if !d.join("lib/libcudnn.so.9").exists() {
            pip_install(&dbase, &[CUDNN_PACKAGE])?;
        }
        if !d.join("lib/libcudnn.so.9").exists() {
            bail!("no libcudnn.so.9 under {} after installing cuDNN", d.display());
        }
        symlink(&d.join("lib/libcudnn.so.9"), &lib.join("libcudnn.so"))?;
        let include = d.join("include");
        for e in std::fs::read_dir(&include).with_context(|| format!("cannot list {}", include.display()))? {
            let path = e?.path();
            if path.extension().is_some_and(|x| x == "h") {
                if let Some(name) = path.file_name() {
                    symlink(&path, &c.join("include").join(name))?;
                }
            }
        }
    }
    if !LIBCUDA.iter().any(|p| Path::new(p).exists()) {
        bail!(
            "no driver library libcuda.so (looked in {}). On Debian: add `contrib non-free` to the \
             Components: line of /etc/apt/sources.list.d/debian.sources, then `apt-get update && \
             apt-get install -y libcuda1`",
            LIBCUDA.join(", ")
        );
    }
    Ok(c)
}

fn size_mb(path: &Path) -> Result<f64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("no {}", path.display()))?
        .len() as f64
        / 1e6)
}

/// `cargo xtask cuda-build`: returns the path of the compressed binary.
pub fn build(args: &[String]) -> Result<PathBuf> {
    let cudnn = !args.iter().any(|a| a == "--no-cudnn");
    let c = toolkit(cudnn)?;
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let path = format!(
        "{}:{}",
        c.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let start = Instant::now();
    run(cargo()
        .args(["build", "--release", "-p", "temper-cli", "--features"])
        .arg(if cudnn { "cudnn" } else { "cuda" })
        .args(["--target-dir", "target/cuda"])
        .env("CUDA_PATH", &c)
        .env("CUDA_ROOT", &c)
        .env("PATH", path)
        .env("LIBRARY_PATH", c.join("lib"))
        .env("CUDA_COMPUTE_CAP", &cap))?;
    let seconds = start.elapsed().as_secs_f64();
    run(Command::new("strip").args(["-o", "target/cuda/temper-cuda", "target/cuda/release/temper"]))?;
    run(Command::new("xz").args(["-9", "-f", "target/cuda/temper-cuda"]))?;
    let dir = root().join("target/cuda");
    let xz = dir.join("temper-cuda.xz");
    eprintln!(
        "built {} in {seconds:.0} s (features {}, compute capability {cap}): binary {:.1} MB, xz {:.1} MB",
        xz.display(),
        if cudnn { "cudnn" } else { "cuda" },
        size_mb(&dir.join("release/temper"))?,
        size_mb(&xz)?
    );
    Ok(xz)
}

/// Files of the check folder besides the binary: (source in the repository, name there).
const FILES: &[(&str, &str)] = &[
    ("xtask/gpu-check/run.sh", "run.sh"),
    ("xtask/gpu-check/summarize.py", "summarize.py"),
    ("crates/temper-train/examples/bench_steps.py", "bench_steps.py"),
    (
        "tests/fixtures/attacks/small_cnn_mnist.safetensors",
        "small_cnn_mnist.safetensors",
    ),
];

/// `cargo xtask gpu-check`.
pub fn gpu_check(args: &[String]) -> Result<()> {
    let xz = if args.iter().any(|a| a == "--no-build") {
        root().join("target/cuda/temper-cuda.xz")
    } else {
        build(&[])?
    };
    if !xz.exists() {
        bail!("no {}; run `cargo xtask cuda-build` first", xz.display());
    }
    let dir = root().join("target/gpu-check");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::copy(&xz, dir.join("temper-cuda.xz")).context("cannot copy the binary")?;
    for (src, name) in FILES {
        std::fs::copy(root().join(src), dir.join(name)).with_context(|| format!("cannot copy {src}"))?;
    }
    let commit = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    std::fs::write(
        dir.join("README.txt"),
        format!(
            "Temper GPU check (issue 14), made by `cargo xtask gpu-check` from commit {commit}.\n\n\
             On the GPU machine (python3 with torch; CUDA 13 under /usr/local/cuda):\n\n    \
             bash run.sh [OUT_DIR]\n\n\
             At most 8 minutes. OUT_DIR (default results/ here) gets results.json (the summary \
             and the acceptance checks) and each part's JSON and log.\n"
        ),
    )?;

    // What can be checked here, without a GPU.
    run(Command::new("bash").arg("-n").arg(dir.join("run.sh")))?;
    run(Command::new(python())
        .args([
            "-c",
            "import ast,sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]",
        ])
        .arg(dir.join("summarize.py"))
        .arg(dir.join("bench_steps.py")))?;
    let smoke = root().join("target/gpu-check-smoke");
    std::fs::create_dir_all(&smoke)?;
    let bin = smoke.join("temper");
    let unpacked = Command::new("xz").args(["-dc"]).arg(&xz).output()?;
    if !unpacked.status.success() {
        bail!("xz -dc {} failed", xz.display());
    }
    std::fs::write(&bin, &unpacked.stdout)?;
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let c = toolkit(true)?;
    // cuDNN 9 lives in its own folder and opens its sub-libraries from the library path.
    let libs = format!(
        "{}:{}:{}",
        c.join("lib").display(),
        home()?.join(".local/cudnn/nvidia/cudnn/lib").display(),
        std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
    );
    run(Command::new(&bin)
        .args(["info", "--json"])
        .env("LD_LIBRARY_PATH", &libs))?;
    run(Command::new(&bin)
        .args([
            "gpu-check",
            "--device",
            "cpu",
            "--small",
            "--parts",
            "kernels,models",
        ])
        .args([
            "--models",
            "small-cnn",
            "--precisions",
            "f32,bf16",
            "--reference-kernels",
            "candle",
        ])
        .env("LD_LIBRARY_PATH", &libs))?;
    let mut total = 0.0;
    for e in std::fs::read_dir(&dir)? {
        total += size_mb(&e?.path())?;
    }
    eprintln!(
        "ready: {} ({total:.1} MB). Copy it to the GPU machine and run `bash run.sh` there.",
        dir.display()
    );
    Ok(())
}
