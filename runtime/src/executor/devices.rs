//! GPU discovery with NVML (nvml-wrapper loads `libnvidia-ml.so.1` at run
//! time, so the binary runs without a GPU; then there are only CPU executors).

use std::sync::OnceLock;

use nvml_wrapper::Nvml;
use serde::Serialize;

/// One GPU as NVML sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuInfo {
    /// NVML/CUDA index.
    pub index: u32,
    /// Model name.
    pub name: String,
    /// Total memory, bytes.
    pub memory_total: u64,
    /// Free memory, bytes.
    pub memory_free: u64,
    /// Utilisation over the last sample period, percent.
    pub utilization: u32,
}

fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| match Nvml::init() {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::info!(reason = %e, "no NVML (no NVIDIA driver or GPU): using CPU executors only");
            None
        }
    })
    .as_ref()
}

/// The GPUs of this machine, with their current memory and utilisation
/// (empty without NVML).
pub fn gpus() -> Vec<GpuInfo> {
    let Some(nvml) = nvml() else { return Vec::new() };
    let count = nvml.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|i| {
            let d = nvml.device_by_index(i).ok()?;
            let mem = d.memory_info().ok()?;
            Some(GpuInfo {
                index: i,
                name: d.name().unwrap_or_else(|_| "unknown".into()),
                memory_total: mem.total,
                memory_free: mem.free,
                utilization: d.utilization_rates().map(|u| u.gpu).unwrap_or(0),
            })
        })
        .collect()
}
