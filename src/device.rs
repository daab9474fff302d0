//! `cpu`, `cuda` or `cuda:N` to a device: one parser for `runtime.device` and `--device`.

use candle_core::Device;

/// The device `name` names, if this build and machine have it; the error says what to do.
pub fn parse(name: &str) -> Result<Device, String> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let Some(rest) = name.strip_prefix("cuda") else { return Err("expected `cpu`, `cuda` or `cuda:N`".into()) };
    let ordinal: usize = match rest.strip_prefix(':') {
        Some(n) => n.parse().map_err(|_| "expected `cpu`, `cuda` or `cuda:N`".to_string())?,
        None if rest.is_empty() => 0,
        None => return Err("expected `cpu`, `cuda` or `cuda:N`".into()),
    };
    cuda(ordinal)
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device, String> {
    Device::new_cuda(ordinal).map_err(|e| {
        // candle's CUDA errors carry a backtrace after the first line.
        let first = e.to_string().lines().next().unwrap_or_default().to_string();
        format!("GPU {ordinal}: {first} (is the NVIDIA driver 580+ loaded and LD_LIBRARY_PATH pointing at CUDA 13's libraries?)")
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(ordinal: usize) -> Result<Device, String> {
    Err(format!("GPU {ordinal}: this binary was built without CUDA; rebuild with `cargo build --release --features cuda` (`just build-cuda`)"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_cpu_cuda_or_cuda_n() {
        assert!(super::parse("cpu").is_ok_and(|d| d.is_cpu()));
        for bad in ["gpu", "cuda5", "cuda:x", "cuda:", ""] {
            assert!(super::parse(bad).is_err_and(|e| e.contains("expected `cpu`, `cuda` or `cuda:N`")), "{bad}");
        }
        // Without a GPU (or without the feature) `cuda:1` is an error naming the GPU.
        if let Err(e) = super::parse("cuda:1") {
            assert!(e.starts_with("GPU 1: "), "{e}");
        }
    }
}
