//! GPU inventory and exclusive assignment.

use std::sync::Mutex;

use ops_core::{GpuRequest, TaskId};

use super::config::GpuDevice;

/// Asks `nvidia-smi` for the host's GPUs; none when it is missing or fails.
pub(crate) fn detect() -> Vec<GpuDevice> {
    let output = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=index,uuid,name", "--format=csv,noheader"])
        .stdin(std::process::Stdio::null())
        .output();
    match output {
        Ok(out) if out.status.success() => parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout)),
        Ok(out) => {
            tracing::warn!(
                status = %out.status,
                stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                "nvidia-smi failed: no GPUs offered"
            );
            Vec::new()
        }
        Err(e) => {
            tracing::debug!(error = %e, "nvidia-smi not available: no GPUs offered");
            Vec::new()
        }
    }
}

/// Parses `0, GPU-8f6c…, NVIDIA A100-SXM4-80GB` lines.
pub(crate) fn parse_nvidia_smi(text: &str) -> Vec<GpuDevice> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ',').map(str::trim);
            let index = parts.next()?.parse().ok()?;
            let uuid = parts.next().filter(|u| !u.is_empty()).map(str::to_owned);
            let name = parts.next().unwrap_or_default();
            Some(GpuDevice::new(Some(index), uuid, name))
        })
        .collect()
}

/// Who holds a GPU.
type Owner = (TaskId, u32);

/// The host's GPUs and who holds each.
#[derive(Debug, Default)]
pub(crate) struct GpuPool {
    slots: Mutex<Vec<(GpuDevice, Option<Owner>)>>,
}

impl GpuPool {
    pub fn new(devices: Vec<GpuDevice>) -> Self {
        Self {
            slots: Mutex::new(devices.into_iter().map(|d| (d, None)).collect()),
        }
    }

    pub fn devices(&self) -> Vec<GpuDevice> {
        self.lock().iter().map(|(d, _)| d.clone()).collect()
    }

    /// Takes `request.count` free GPUs matching its model, or explains why it cannot.
    pub fn acquire(&self, request: &GpuRequest, owner: Owner) -> Result<Vec<GpuDevice>, String> {
        if request.count == 0 {
            return Ok(Vec::new());
        }
        let model = request.model.as_deref().map(str::to_lowercase);
        let matches = |d: &GpuDevice| {
            model
                .as_deref()
                .is_none_or(|m| d.name.to_lowercase().contains(m))
        };
        let mut slots = self.lock();
        let free: Vec<usize> = slots
            .iter()
            .enumerate()
            .filter(|(_, (d, held))| held.is_none() && matches(d))
            .map(|(i, _)| i)
            .take(request.count as usize)
            .collect();
        if free.len() < request.count as usize {
            let total = slots.iter().filter(|(d, _)| matches(d)).count();
            return Err(format!(
                "{} GPU(s){} requested, {} free of {} matching",
                request.count,
                request
                    .model
                    .as_deref()
                    .map(|m| format!(" of model {m:?}"))
                    .unwrap_or_default(),
                free.len(),
                total
            ));
        }
        Ok(free
            .into_iter()
            .map(|i| {
                slots[i].1 = Some(owner);
                slots[i].0.clone()
            })
            .collect())
    }

    /// Every held GPU with its holder.
    pub fn held(&self) -> Vec<(GpuDevice, Owner)> {
        self.lock()
            .iter()
            .filter_map(|(d, held)| held.map(|owner| (d.clone(), owner)))
            .collect()
    }

    /// Marks the GPUs with these ids as held (after a re-attach).
    pub fn claim(&self, ids: &[String], owner: Owner) {
        for (d, held) in self.lock().iter_mut() {
            if ids.contains(&d.id()) {
                *held = Some(owner);
            }
        }
    }

    /// Frees everything `owner` holds.
    pub fn release(&self, owner: Owner) {
        for (_, held) in self.lock().iter_mut() {
            if *held == Some(owner) {
                *held = None;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(GpuDevice, Option<Owner>)>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigns_exclusively_by_model() {
        let devices = parse_nvidia_smi("0, GPU-a, NVIDIA A100-SXM4-80GB\n1, GPU-b, Tesla T4\n");
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[1].id(), "GPU-b");
        let pool = GpuPool::new(devices);
        let (t1, t2) = ((TaskId::new(), 1), (TaskId::new(), 1));
        let a100 = GpuRequest {
            count: 1,
            model: Some("a100".into()),
        };
        assert_eq!(pool.acquire(&a100, t1).unwrap()[0].id(), "GPU-a");
        let err = pool.acquire(&a100, t2).unwrap_err();
        assert!(err.contains("0 free of 1"), "{err}");
        let any = GpuRequest {
            count: 1,
            model: None,
        };
        assert_eq!(pool.acquire(&any, t2).unwrap()[0].id(), "GPU-b");
        pool.release(t1);
        assert_eq!(pool.acquire(&a100, t2).unwrap()[0].id(), "GPU-a");
    }
}
