//! Data-parallel training over several processes (ranks) on an established collective library: Open MPI
//! (`mpi` feature; CPU clusters, and the tests here) or NCCL between CUDA devices (`nccl` feature). The
//! launcher decides the group (`launch.rs`: mpirun, torchrun, Slurm); `runtime.distributed` picks or forces
//! the library.
//!
//! Every collective waits at most `runtime.distributed_timeout_s`: a rank that died or hangs stops the
//! group with an error naming it (rank 0 learns who arrived from a message each rank sends first), never a
//! silent hang.

pub mod launch;
#[cfg(feature = "mpi")]
mod mpi_group;
#[cfg(feature = "nccl")]
mod nccl_group;

use candle_core::Tensor;

pub use launch::{Launch, Launcher};

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("runtime.distributed = `{choice}`: {detail}")]
    Setup { choice: String, detail: String },
    #[error("distributed training: {0}")]
    Collective(String),
    #[error("distributed training: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// What a group of ranks can do together. Each call is made by every rank, in the same order.
pub trait Collective: Send + Sync {
    /// Element-wise sums over the ranks (same shapes on every rank); `what` names the point for errors.
    fn all_reduce_sum(&self, tensors: &[Tensor], what: &str) -> Result<Vec<Tensor>, DistError>;
    /// Rank 0's bytes, on every rank.
    fn broadcast(&self, bytes: Vec<u8>, what: &str) -> Result<Vec<u8>, DistError>;
    fn barrier(&self, what: &str) -> Result<(), DistError>;
    fn library(&self) -> &'static str;
}

/// This process's place in the group.
pub struct Group {
    pub rank: usize,
    pub world: usize,
    /// Rank within its machine (the CUDA device to use).
    pub local_rank: usize,
    collective: Option<Box<dyn Collective>>,
}

impl Group {
    /// One process.
    pub fn single() -> Self {
        Self { rank: 0, world: 1, local_rank: 0, collective: None }
    }

    /// The group this process was launched into, with the library `choice` asks for.
    pub fn join(choice: crate::recipe::Distributed, device: &str, timeout_s: f64) -> Result<Self, DistError> {
        use crate::recipe::Distributed as D;
        let launch = launch::detect();
        let setup = |detail: String| DistError::Setup { choice: choice.name().into(), detail };
        let library = match (choice, &launch) {
            (D::None, _) => return Ok(Self::single()),
            (D::Auto, None) => return Ok(Self::single()),
            (D::Auto, Some(l)) if l.world <= 1 => return Ok(Self::single()),
            (D::Auto, Some(l)) if l.launcher == Launcher::Mpirun => D::Mpi,
            (D::Auto, Some(_)) if device.starts_with("cuda") => D::Nccl,
            (D::Auto, Some(l)) => return Err(setup(format!("launched by {} with {} ranks on a CPU device: start CPU ranks with mpirun (`just run-dist N RECIPE`), or set runtime.device = \"cuda\"", l.launcher.name(), l.world))),
            (other, _) => other,
        };
        let timeout = std::time::Duration::from_secs_f64(timeout_s.max(1.0));
        match library {
            D::Mpi => Self::mpi(timeout, setup),
            D::Nccl => Self::nccl(launch, device, timeout, setup),
            D::None | D::Auto => Ok(Self::single()),
        }
    }

    #[cfg(feature = "mpi")]
    fn mpi(timeout: std::time::Duration, setup: impl Fn(String) -> DistError) -> Result<Self, DistError> {
        let g = mpi_group::MpiGroup::init(timeout).map_err(setup)?;
        let (rank, world, local_rank) = (g.rank, g.world, g.local_rank);
        tracing::info!(rank, world, library = "Open MPI", "distributed group");
        Ok(Self { rank, world, local_rank, collective: Some(Box::new(g)) })
    }

    #[cfg(not(feature = "mpi"))]
    fn mpi(_: std::time::Duration, setup: impl Fn(String) -> DistError) -> Result<Self, DistError> {
        Err(setup("this build has no MPI: build with `--features mpi` (Debian: libopenmpi-dev)".into()))
    }

    #[cfg(feature = "nccl")]
    fn nccl(launch: Option<Launch>, device: &str, timeout: std::time::Duration, setup: impl Fn(String) -> DistError) -> Result<Self, DistError> {
        let l = launch.ok_or_else(|| setup("NCCL needs a launcher's environment (torchrun: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; or Slurm)".into()))?;
        let g = nccl_group::NcclGroup::init(&l, device, timeout).map_err(setup)?;
        tracing::info!(rank = l.rank, world = l.world, library = "NCCL", "distributed group");
        Ok(Self { rank: l.rank, world: l.world, local_rank: l.local_rank, collective: Some(Box::new(g)) })
    }

    #[cfg(not(feature = "nccl"))]
    fn nccl(_: Option<Launch>, _: &str, _: std::time::Duration, setup: impl Fn(String) -> DistError) -> Result<Self, DistError> {
        Err(setup("this build has no NCCL: build with `--features nccl` (CUDA)".into()))
    }

    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    pub fn is_distributed(&self) -> bool {
        self.world > 1
    }

    /// Sums `tensors` over the ranks (the tensors themselves in a single process).
    pub fn all_reduce_sum(&self, tensors: &[Tensor], what: &str) -> Result<Vec<Tensor>, DistError> {
        match &self.collective {
            Some(c) => c.all_reduce_sum(tensors, what),
            None => Ok(tensors.to_vec()),
        }
    }

    /// Sums a few numbers over the ranks.
    pub fn sum_f64(&self, values: &[f64], what: &str) -> Result<Vec<f64>, DistError> {
        if self.collective.is_none() {
            return Ok(values.to_vec());
        }
        let t = Tensor::new(values, &candle_core::Device::Cpu)?;
        Ok(self.all_reduce_sum(&[t], what)?[0].to_vec1::<f64>()?)
    }

    /// Rank 0's value, on every rank.
    pub fn broadcast<T: serde::Serialize + serde::de::DeserializeOwned>(&self, value: &T, what: &str) -> Result<T, DistError> {
        let Some(c) = &self.collective else { return serde_json::from_slice(&serde_json::to_vec(value).map_err(|e| DistError::Collective(e.to_string()))?).map_err(|e| DistError::Collective(e.to_string())) };
        let bytes = if self.is_leader() { serde_json::to_vec(value).map_err(|e| DistError::Collective(e.to_string()))? } else { Vec::new() };
        let got = c.broadcast(bytes, what)?;
        serde_json::from_slice(&got).map_err(|e| DistError::Collective(format!("{what}: {e}")))
    }

    /// Every rank's value, in rank order, on rank 0 (`None` on the others). Built on the sum: each rank
    /// writes its bytes into its own segment of a zero vector, so the sum is exact and one implementation
    /// serves both libraries.
    pub fn gather<T: serde::Serialize + serde::de::DeserializeOwned>(&self, value: &T, what: &str) -> Result<Option<Vec<T>>, DistError> {
        let err = |e: serde_json::Error| DistError::Collective(format!("{what}: {e}"));
        let mine = serde_json::to_vec(value).map_err(err)?;
        if self.collective.is_none() {
            return Ok(Some(vec![serde_json::from_slice(&mine).map_err(err)?]));
        }
        let mut lens = vec![0f64; self.world];
        lens[self.rank] = mine.len() as f64;
        let lens: Vec<usize> = self.sum_f64(&lens, what)?.into_iter().map(|v| v as usize).collect();
        let start: usize = lens[..self.rank].iter().sum();
        let mut flat = vec![0f32; lens.iter().sum()];
        for (slot, &b) in flat[start..].iter_mut().zip(&mine) {
            *slot = b as f32;
        }
        let summed = self.all_reduce_sum(&[Tensor::new(flat.as_slice(), &candle_core::Device::Cpu)?], what)?[0].to_vec1::<f32>()?;
        if !self.is_leader() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(self.world);
        let mut at = 0;
        for n in lens {
            let bytes: Vec<u8> = summed[at..at + n].iter().map(|&v| v as u8).collect();
            out.push(serde_json::from_slice(&bytes).map_err(err)?);
            at += n;
        }
        Ok(Some(out))
    }

    /// The part of `items` this rank takes (every `world`-th, from its rank): the shards are disjoint and
    /// cover `items`; [`interleave`] puts gathered shards back in order.
    pub fn shard<T: Clone>(&self, items: &[T]) -> Vec<T> {
        items.iter().skip(self.rank).step_by(self.world).cloned().collect()
    }

    pub fn barrier(&self, what: &str) -> Result<(), DistError> {
        match &self.collective {
            Some(c) => c.barrier(what),
            None => Ok(()),
        }
    }

    pub fn library(&self) -> &'static str {
        self.collective.as_ref().map_or("none", |c| c.library())
    }
}

/// The shards of [`Group::shard`] (in rank order) merged back into the order of the items they came from.
pub fn interleave<T>(shards: Vec<Vec<T>>) -> Vec<T> {
    let world = shards.len();
    let total: usize = shards.iter().map(Vec::len).sum();
    let mut iters: Vec<_> = shards.into_iter().map(Vec::into_iter).collect();
    (0..total).filter_map(|j| iters[j % world].next()).collect()
}

/// `tensors` as one flat tensor of `dtype` on `device` (what a library sums in one call); `None` when empty.
#[cfg(any(feature = "mpi", feature = "nccl"))]
fn flatten(tensors: &[Tensor], dtype: candle_core::DType, device: &candle_core::Device) -> candle_core::Result<Option<Tensor>> {
    let flat: Vec<Tensor> = tensors.iter().map(|t| t.to_dtype(dtype)?.flatten_all()?.to_device(device)).collect::<candle_core::Result<_>>()?;
    if flat.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tensor::cat(&flat, 0)?.contiguous()?))
}

/// The flat `summed` split back into `like`'s shapes, dtypes and devices.
#[cfg(any(feature = "mpi", feature = "nccl"))]
fn unflatten(summed: &Tensor, like: &[Tensor]) -> candle_core::Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(like.len());
    let mut at = 0;
    for t in like {
        let n = t.elem_count();
        out.push(summed.narrow(0, at, n)?.reshape(t.shape())?.to_dtype(t.dtype())?.to_device(t.device())?);
        at += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_disjoint_cover_the_items_and_interleave_back() {
        let items: Vec<usize> = (0..11).collect();
        for world in 1..5 {
            let shards: Vec<Vec<usize>> = (0..world).map(|rank| Group { rank, world, local_rank: 0, collective: None }.shard(&items)).collect();
            let mut all: Vec<usize> = shards.concat();
            all.sort();
            assert_eq!(all, items, "world {world}: the shards cover the items once each");
            assert_eq!(interleave(shards), items, "world {world}");
        }
    }

    #[test]
    fn gather_in_one_process_is_the_value() {
        let g = Group::single();
        assert_eq!(g.gather(&vec![1, 2, 3], "test").unwrap(), Some(vec![vec![1, 2, 3]]));
    }
}
