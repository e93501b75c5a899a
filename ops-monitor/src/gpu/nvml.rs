//! Readings from NVML through nvml-wrapper (feature `nvml`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;

use super::{GpuReading, GpuSource};
use crate::CollectError;

// NVML field ids of row remapping (nvml.h: NVML_FI_DEV_REMAPPED_*), what DCGM reads.
const REMAPPED_COR: FieldId = FieldId(142);
const REMAPPED_UNC: FieldId = FieldId(143);
const REMAPPED_FAILURE: FieldId = FieldId(145);

/// GPU readings from NVML. XID errors arrive as NVML events: a thread waits for them
/// and keeps the last code per GPU (`DCGM_FI_DEV_XID_ERRORS`), as DCGM does.
pub struct NvmlSource {
    nvml: Arc<Nvml>,
    xids: Arc<Mutex<HashMap<u32, u64>>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for NvmlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSource").finish_non_exhaustive()
    }
}

impl NvmlSource {
    /// Loads the NVIDIA library and starts listening for XID events. Fails with NVML's
    /// reason (library not found, driver not loaded, no permission).
    pub fn open() -> Result<Self, CollectError> {
        let nvml = Nvml::init().map_err(|e| CollectError::new(format!("NVML unavailable: {e}")))?;
        let count = nvml
            .device_count()
            .map_err(|e| CollectError::new(format!("NVML: counting GPUs: {e}")))?;
        tracing::info!(gpus = count, "NVML loaded");
        let source = Self {
            nvml: Arc::new(nvml),
            xids: Arc::default(),
            stop: Arc::default(),
        };
        source.listen_for_xids(count);
        Ok(source)
    }

    fn listen_for_xids(&self, count: u32) {
        let nvml = self.nvml.clone();
        let xids = self.xids.clone();
        let stop = self.stop.clone();
        let spawned = std::thread::Builder::new()
            .name("nvml-xid".into())
            .spawn(move || {
                let mut set = match nvml.create_event_set() {
                    Ok(set) => set,
                    Err(e) => {
                        tracing::warn!(error = %e, "NVML events unavailable: XID errors are not reported");
                        return;
                    }
                };
                use nvml_wrapper::bitmasks::event::EventTypes;
                for i in 0..count {
                    let Ok(device) = nvml.device_by_index(i) else { continue };
                    let supported = device
                        .supported_event_types()
                        .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
                    if !supported {
                        tracing::warn!(gpu = i, "XID events not supported on this GPU");
                        continue;
                    }
                    // A failed registration consumes the set: start a new one.
                    set = match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                        Ok(set) => set,
                        Err(e) => {
                            tracing::warn!(gpu = i, error = %e, "XID events unavailable: not reported");
                            return;
                        }
                    };
                }
                while !stop.load(Ordering::Relaxed) {
                    match set.wait(1000) {
                        Ok(event) => {
                            let code = match event.event_data {
                                Some(nvml_wrapper::enums::event::XidError::Value(v)) => v,
                                _ => continue,
                            };
                            if let Ok(index) = event.device.index() {
                                tracing::warn!(gpu = index, xid = code, "GPU XID error");
                                xids.lock().unwrap_or_else(PoisonError::into_inner).insert(index, code);
                            }
                        }
                        Err(NvmlError::Timeout) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "waiting for NVML events failed: XID errors are no longer reported");
                            return;
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the XID listener");
        }
    }
}

impl Drop for NvmlSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn number(v: &SampleValue) -> u64 {
    match *v {
        SampleValue::F64(x) => x as u64,
        SampleValue::U32(x) => u64::from(x),
        SampleValue::U64(x) => x,
        SampleValue::I64(x) => x.max(0) as u64,
    }
}

impl GpuSource for NvmlSource {
    fn read(&self) -> Result<Vec<GpuReading>, CollectError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| CollectError::new(format!("NVML: counting GPUs: {e}")))?;
        let xids = self
            .xids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut out = Vec::with_capacity(count as usize);
        for i in 0..count {
            let device = self
                .nvml
                .device_by_index(i)
                .map_err(|e| CollectError::new(format!("NVML: GPU {i}: {e}")))?;
            let mut r = GpuReading::new(
                i,
                device.uuid().unwrap_or_default(),
                device.name().unwrap_or_default(),
            );
            r.utilization = device.utilization_rates().ok().map(|u| f64::from(u.gpu));
            if let Ok(mem) = device.memory_info() {
                r.fb_used_mib = Some(mem.used as f64 / 1048576.0);
                r.fb_free_mib = Some(mem.free as f64 / 1048576.0);
            }
            r.temperature_c = device
                .temperature(TemperatureSensor::Gpu)
                .ok()
                .map(f64::from);
            r.power_w = device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0);
            r.energy_mj = device.total_energy_consumption().ok().map(|e| e as f64);
            r.last_xid = Some(xids.get(&i).copied().unwrap_or(0));
            if let Ok(values) =
                device.field_values_for(&[REMAPPED_COR, REMAPPED_UNC, REMAPPED_FAILURE])
            {
                let get = |k: usize| {
                    values
                        .get(k)
                        .and_then(|s| s.as_ref().ok())
                        .and_then(|s| s.value.as_ref().ok())
                        .map(number)
                };
                r.remapped_correctable = get(0);
                r.remapped_uncorrectable = get(1);
                r.remap_failure = get(2).map(|f| f > 0);
            }
            out.push(r);
        }
        Ok(out)
    }
}
