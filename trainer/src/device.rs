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
        }
    }
}

impl fmt::Display for BackendInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "libtorch:        linked (tch {})", TCH_VERSION)?;
        writeln!(f, "CPU threads:     {}", self.threads)?;
        writeln!(f, "MKL:             {}", yes_no(self.mkl_available))?;
        writeln!(f, "MKL_CBWR:        {}", self.mkl_cbwr.as_deref().unwrap_or("unset (results may depend on the thread count)"))?;
        writeln!(f, "CUDA available:  {} ({} devices)", yes_no(self.cuda_available), self.cuda_devices)?;
        write!(f, "cuDNN available: {}", yes_no(self.cudnn_available))
    }
}

/// The MKL reproducibility mode the trainer expects: the AVX2 code path in strict mode, whose
/// matrix products give the same bits for any thread count and any AVX2-capable x86-64 CPU.
pub const MKL_CBWR_DEFAULT: &str = "AVX2,STRICT";

/// Puts [`MKL_CBWR_DEFAULT`] in the environment unless the user set `MKL_CBWR`. MKL reads it
/// when libtorch first calls it, so this must run at the start of `main`, before any other
/// thread exists and before any tensor is created.
pub fn configure_reproducibility() {
    if std::env::var_os("MKL_CBWR").is_none() {
        std::env::set_var("MKL_CBWR", MKL_CBWR_DEFAULT);
    }
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
    fn probe_reports_at_least_one_cpu_thread() {
        let info = BackendInfo::probe();
        assert!(info.threads >= 1);
        assert!(info.to_string().contains("CPU threads"));
    }
}
