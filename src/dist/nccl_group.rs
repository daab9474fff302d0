//! The group over NCCL between CUDA devices (feature `nccl`). NCCL's unique id goes from rank 0 to the
//! others through a TCP rendezvous on the launcher's `MASTER_ADDR:MASTER_PORT`; the sums run on the
//! devices (a custom op over candle's CUDA storage). The timeout covers the rendezvous; once the
//! communicator is up, a rank that dies is reported by the launcher (torchrun / Slurm stop the step).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::launch::Launch;
use super::{Collective, DistError};

pub struct NcclGroup {
    comm: Arc<Comm>,
    device: Device,
    rank: usize,
}

// SAFETY: the communicator is used from the training thread only, one collective at a time.
unsafe impl Send for NcclGroup {}
unsafe impl Sync for NcclGroup {}

/// NCCL's id from rank 0 to every rank: rank 0 listens on the master port, the others connect (retrying
/// until the timeout) and read its 128 bytes.
fn rendezvous(l: &Launch, id: Option<&Id>, timeout: Duration) -> Result<[core::ffi::c_char; 128], String> {
    let (addr, port) = l.master.clone().ok_or("no MASTER_ADDR / MASTER_PORT (or Slurm node list) for NCCL's rendezvous")?;
    let deadline = Instant::now() + timeout;
    if let Some(id) = id {
        let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("rank 0 cannot listen on port {port}: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
        let mut served = 0;
        while served + 1 < l.world {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).map_err(|e| e.to_string())?;
                    s.write_all(&bytes).map_err(|e| format!("sending NCCL's id: {e}"))?;
                    served += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(format!("only {served} of {} ranks reached the rendezvous on port {port} within {} s", l.world - 1, timeout.as_secs_f64()));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(format!("rendezvous on port {port}: {e}")),
            }
        }
        return Ok(*id.internal());
    }
    loop {
        match TcpStream::connect((addr.as_str(), port)) {
            Ok(mut s) => {
                let mut buf = [0u8; 128];
                s.read_exact(&mut buf).map_err(|e| format!("reading NCCL's id from {addr}:{port}: {e}"))?;
                let mut out = [0 as core::ffi::c_char; 128];
                for (o, b) in out.iter_mut().zip(buf) {
                    *o = b as core::ffi::c_char;
                }
                return Ok(out);
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("rank {} could not reach rank 0 at {addr}:{port} within {} s: {e}", l.rank, timeout.as_secs_f64())),
        }
    }
}

impl NcclGroup {
    pub fn init(l: &Launch, device: &str, timeout: Duration) -> Result<Self, String> {
        // One device per rank: the launcher's local rank.
        let ordinal = if device == "cuda" { l.local_rank } else { device.strip_prefix("cuda:").and_then(|d| d.parse().ok()).unwrap_or(l.local_rank) };
        let dev = Device::new_cuda(ordinal).map_err(|e| format!("CUDA device {ordinal}: {e}"))?;
        let cuda = dev.as_cuda_device().map_err(|e| e.to_string())?.clone();
        let id = if l.rank == 0 { Some(Id::new().map_err(|e| format!("NCCL id: {e:?}"))?) } else { None };
        let internal = rendezvous(l, id.as_ref(), timeout)?;
        let comm = Comm::from_rank(cuda.cuda_stream(), l.rank, l.world, Id::uninit(internal)).map_err(|e| format!("NCCL communicator: {e:?}"))?;
        Ok(Self { comm: Arc::new(comm), device: dev, rank: l.rank })
    }
}

/// Sum over the ranks of an f32 tensor on this rank's device.
struct AllReduce<'a>(&'a Comm);

impl CustomOp1 for AllReduce<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("NCCL sums CUDA tensors only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        if !l.is_contiguous() || l.start_offset() != 0 {
            candle_core::bail!("nccl-all-reduce needs a contiguous tensor");
        }
        let n = l.shape().elem_count();
        let src = s.as_cuda_slice::<f32>()?;
        let dev = s.device.clone();
        let mut dst = dev.alloc_zeros::<f32>(n)?;
        self.0.all_reduce(src, &mut dst, &ReduceOp::Sum).map_err(|e| candle_core::Error::Cuda(format!("{e:?}").into()))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}

impl Collective for NcclGroup {
    fn all_reduce_sum(&self, tensors: &[Tensor], what: &str) -> Result<Vec<Tensor>, DistError> {
        let Some(all) = super::flatten(tensors, DType::F32, &self.device)? else { return Ok(Vec::new()) };
        let summed = all.apply_op1_no_bwd(&AllReduce(&self.comm)).map_err(|e| DistError::Collective(format!("{what}: {e}")))?;
        Ok(super::unflatten(&summed, tensors)?)
    }

    fn broadcast(&self, bytes: Vec<u8>, what: &str) -> Result<Vec<u8>, DistError> {
        // Bytes as f32 values through the sum (rank 0 contributes them, the others zeros): exact for 0..=255.
        let len = self.all_reduce_sum(&[Tensor::new(&[if self.rank == 0 { bytes.len() as f32 } else { 0.0 }], &Device::Cpu)?], what)?[0].to_vec1::<f32>()?[0] as usize;
        let mine: Vec<f32> = if self.rank == 0 { bytes.iter().map(|&b| b as f32).collect() } else { vec![0.0; len] };
        let got = self.all_reduce_sum(&[Tensor::new(mine.as_slice(), &Device::Cpu)?], what)?[0].to_vec1::<f32>()?;
        Ok(got.into_iter().map(|v| v as u8).collect())
    }

    fn barrier(&self, what: &str) -> Result<(), DistError> {
        self.all_reduce_sum(&[Tensor::new(&[1f32], &Device::Cpu)?], what).map(|_| ())
    }

    fn library(&self) -> &'static str {
        "nccl"
    }
}
