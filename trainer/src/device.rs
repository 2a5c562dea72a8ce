//! Which compute backend the trainer runs on, and how it is configured.

use std::fmt;

/// Facts about the libtorch this binary is linked against, for `trellis doctor` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    pub cuda_available: bool,
    pub cuda_devices: i64,
    pub cudnn_available: bool,
    pub mkl_available: bool,
    pub threads: i32,
    /// The `MKL_CBWR` reproducibility mode in force, if any.
    pub mkl_cbwr: Option<String>,
    /// The `ATEN_CPU_CAPABILITY` libtorch's own CPU kernels are held to, if any.
    pub aten_cpu_capability: Option<String>,
}

impl BackendInfo {
    /// Probes the linked libtorch.
    pub fn probe() -> Self {
        Self {
            cuda_available: tch::Cuda::is_available(),
            cuda_devices: tch::Cuda::device_count(),
            cudnn_available: tch::Cuda::cudnn_is_available(),
            mkl_available: tch::utils::has_mkl(),
            threads: tch::get_num_threads(),
            mkl_cbwr: std::env::var("MKL_CBWR").ok(),
            aten_cpu_capability: std::env::var("ATEN_CPU_CAPABILITY").ok(),
        }
    }
}

impl fmt::Display for BackendInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "libtorch:        linked (tch {})", TCH_VERSION)?;
        writeln!(f, "CPU threads:     {}", self.threads)?;
        writeln!(f, "MKL:             {}", yes_no(self.mkl_available))?;
        writeln!(
            f,
            "MKL_CBWR:        {}",
            self.mkl_cbwr.as_deref().unwrap_or("unset (results may depend on the thread count)")
        )?;
        writeln!(
            f,
            "ATen kernels:    {}",
            self.aten_cpu_capability.as_deref().unwrap_or("unset (results may depend on the CPU model)")
        )?;
        writeln!(f, "CUDA available:  {} ({} devices)", yes_no(self.cuda_available), self.cuda_devices)?;
        write!(f, "cuDNN available: {}", yes_no(self.cudnn_available))
    }
}

/// The MKL reproducibility mode the trainer expects: the AVX2 code path in strict mode, whose
/// matrix products give the same bits for any thread count and any AVX2-capable x86-64 CPU.
pub const MKL_CBWR_DEFAULT: &str = "AVX2,STRICT";

/// The vector width libtorch's own CPU kernels (reductions, element-wise, softmax, norms) are held
/// to: ATen picks AVX-512 kernels where the CPU has them, whose lane count changes the order of
/// a sum, so a trail trained on an AVX-512 machine would not replay bit for bit on an AVX2-only
/// one (measured: a `nano` run's final weights differ between the two on one machine).
pub const ATEN_CPU_CAPABILITY_DEFAULT: &str = "avx2";

/// The cuBLAS workspace setting under which its matrix products repeat bit for bit (NVIDIA's
/// cuBLAS documentation, "Results reproducibility"; PyTorch refuses cuBLAS calls in
/// deterministic mode without it).
pub const CUBLAS_WORKSPACE_CONFIG_DEFAULT: &str = ":4096:8";

/// Puts [`MKL_CBWR_DEFAULT`], [`ATEN_CPU_CAPABILITY_DEFAULT`] (on x86-64) and
/// [`CUBLAS_WORKSPACE_CONFIG_DEFAULT`] in the environment unless the user set them. MKL, ATen and
/// cuBLAS read them when libtorch first calls them, so this must run at the start of `main`,
/// before any other thread exists and before any tensor is created.
pub fn configure_reproducibility() {
    if std::env::var_os("MKL_CBWR").is_none() {
        std::env::set_var("MKL_CBWR", MKL_CBWR_DEFAULT);
    }
    if cfg!(target_arch = "x86_64") && std::env::var_os("ATEN_CPU_CAPABILITY").is_none() {
        std::env::set_var("ATEN_CPU_CAPABILITY", ATEN_CPU_CAPABILITY_DEFAULT);
    }
    if std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        std::env::set_var("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG_DEFAULT);
    }
}

// tch 0.24 does not wrap `at::Context::setDeterministicAlgorithms` (what
// `torch.use_deterministic_algorithms` calls), so it is reached through its C++ symbols in
// libtorch_cpu, which torch-sys already links. Non-virtual member functions take `this` as their
// first argument in the Itanium C++ ABI, and `bool` is passed as a C `bool`. The names are those
// of libtorch 2.11.0, the only version the workspace builds against (`Cargo.toml`); a libtorch
// without them fails at link time, not at run time.
extern "C" {
    #[link_name = "_ZN2at13globalContextEv"]
    fn at_global_context() -> *mut std::ffi::c_void;
    #[link_name = "_ZN2at7Context26setDeterministicAlgorithmsEbb"]
    fn at_context_set_deterministic_algorithms(context: *mut std::ffi::c_void, enabled: bool, warn_only: bool);
    #[link_name = "_ZNK2at7Context23deterministicAlgorithmsEv"]
    fn at_context_deterministic_algorithms(context: *const std::ffi::c_void) -> bool;
}

/// Switches libtorch's deterministic-algorithms mode, as `torch.use_deterministic_algorithms`
/// does: kernels with a deterministic variant use it (cuDNN, scatter-adds, and the
/// memory-efficient attention backward pass that `--device cuda` runs for f32, which otherwise
/// accumulates with atomics), and an operation without one fails with an error instead of
/// varying silently. (The warn-only form is not enough: under it PyTorch keeps the
/// non-deterministic attention backward, seen on an H200, `docs/benchmarks.md`.) The CUDA path
/// turns it on; the CPU path needs no switch: the kernels the trainer uses there are
/// deterministic, and `MKL_CBWR` pins the matrix products.
#[allow(unsafe_code)] // the one call into libtorch that tch does not wrap
pub fn use_deterministic_algorithms(enabled: bool) {
    // SAFETY: `globalContext()` returns libtorch's process-wide context, valid for the life of
    // the process; the setter only stores two flags in it.
    unsafe { at_context_set_deterministic_algorithms(at_global_context(), enabled, false) }
}

/// Whether libtorch's deterministic-algorithms mode is on.
#[allow(unsafe_code)]
pub fn deterministic_algorithms() -> bool {
    // SAFETY: as in `use_deterministic_algorithms`; the getter only reads a flag.
    unsafe { at_context_deterministic_algorithms(at_global_context()) }
}

/// Why a `--device` value cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("unknown device '{0}': use cpu, cuda or cuda:N")]
    Unknown(String),
    #[error("--device {0}: CUDA is not available to this binary (run `trellis doctor`)")]
    CudaUnavailable(String),
    #[error("--device {text}: only {count} CUDA device(s) present")]
    NoSuchCuda { text: String, count: usize },
}

/// The device that `text` (`cpu`, `cuda` or `cuda:N`) names, failing clearly when CUDA is asked
/// for but absent. Selecting a CUDA device also switches on what makes GPU re-execution repeat
/// bit for bit (no cuDNN autotuning, deterministic algorithms).
pub fn select(text: &str) -> Result<tch::Device, DeviceError> {
    let index = match text {
        "cpu" => return Ok(tch::Device::Cpu),
        "cuda" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| DeviceError::Unknown(other.to_string()))?,
    };
    if !tch::Cuda::is_available() {
        return Err(DeviceError::CudaUnavailable(text.to_string()));
    }
    let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    if index >= count {
        return Err(DeviceError::NoSuchCuda { text: text.to_string(), count });
    }
    tch::Cuda::cudnn_set_benchmark(false);
    use_deterministic_algorithms(true);
    Ok(tch::Device::Cuda(index))
}

/// The tch version this crate is pinned to (PyTorch 2.11.0).
pub const TCH_VERSION: &str = "0.24.0";

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_algorithms_switch_round_trips_through_libtorch() {
        let before = deterministic_algorithms();
        use_deterministic_algorithms(!before);
        assert_eq!(deterministic_algorithms(), !before);
        use_deterministic_algorithms(before);
        assert_eq!(deterministic_algorithms(), before);
    }

    #[test]
    fn devices_are_named_cpu_cuda_or_cuda_n_and_unknown_names_are_refused() {
        assert_eq!(select("cpu"), Ok(tch::Device::Cpu));
        for bad in ["gpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda0", ""] {
            assert_eq!(select(bad), Err(DeviceError::Unknown(bad.to_string())), "{bad:?}");
        }
        // Only on a machine without CUDA: selecting a GPU switches a process-wide mode that the
        // round-trip test above also flips.
        if !tch::Cuda::is_available() {
            assert_eq!(select("cuda"), Err(DeviceError::CudaUnavailable("cuda".into())));
            assert_eq!(select("cuda:1"), Err(DeviceError::CudaUnavailable("cuda:1".into())));
        }
    }

    #[test]
    fn probe_reports_at_least_one_cpu_thread() {
        let info = BackendInfo::probe();
        assert!(info.threads >= 1);
        assert!(info.to_string().contains("CPU threads"));
    }
}
