//! The group over Open MPI (rsmpi). Collectives are the library's; the timeouts are ours: every
//! collective is started non-blocking and polled against the deadline. Before each one, every rank sends
//! rank 0 its sequence number, so rank 0 can name the ranks that did not arrive; on a timeout the rank
//! prints the error and aborts the job (`MPI_Abort`), which stops every rank.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use mpi::collective::SystemOperation;
use mpi::point_to_point::{Destination, Source};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};

use super::{Collective, DistError};

const ARRIVAL_TAG: i32 = 7100;

pub struct MpiGroup {
    _universe: mpi::environment::Universe,
    comm: SimpleCommunicator,
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    timeout: Duration,
    sequence: AtomicU64,
}

// SAFETY: MPI is initialised with `Threading::Serialized` and every collective is issued from the
// training thread only (one at a time); the handles are plain MPI handles.
unsafe impl Send for MpiGroup {}
unsafe impl Sync for MpiGroup {}

impl MpiGroup {
    pub fn init(timeout: Duration) -> Result<Self, String> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Serialized).ok_or("MPI was already initialised in this process")?;
        let comm = universe.world();
        let (rank, world) = (comm.rank() as usize, comm.size() as usize);
        let local_rank = std::env::var("OMPI_COMM_WORLD_LOCAL_RANK").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Self { _universe: universe, comm, rank, world, local_rank, timeout, sequence: AtomicU64::new(0) })
    }

    /// Stops the whole job with `message` (printed by this rank first).
    fn fail(&self, message: String) -> ! {
        tracing::error!(rank = self.rank, "{message}");
        eprintln!("error: rank {}: {message}", self.rank);
        self.comm.abort(3)
    }

    fn secs(&self) -> f64 {
        self.timeout.as_secs_f64()
    }

    /// Every rank reports to rank 0 before the collective `what`; rank 0 names the ranks that do not
    /// arrive within the timeout, or that are at another collective.
    fn arrive(&self, what: &str) {
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.timeout;
        if self.rank != 0 {
            mpi::request::scope(|scope| {
                let req = self.comm.process_at_rank(0).immediate_send_with_tag(scope, &seq, ARRIVAL_TAG);
                self.wait(req, deadline, what);
            });
            return;
        }
        let mut got = vec![u64::MAX; self.world - 1];
        mpi::request::scope(|scope| {
            let mut pending: Vec<(usize, mpi::request::Request<'_, u64, _>)> = Vec::new();
            for (i, slot) in got.iter_mut().enumerate() {
                pending.push((i + 1, self.comm.process_at_rank(i as i32 + 1).immediate_receive_into_with_tag(scope, slot, ARRIVAL_TAG)));
            }
            while !pending.is_empty() {
                let mut still = Vec::with_capacity(pending.len());
                for (r, req) in pending {
                    if let Err(req) = req.test() {
                        still.push((r, req));
                    }
                }
                pending = still;
                if !pending.is_empty() && Instant::now() > deadline {
                    let missing: Vec<String> = pending.iter().map(|(r, _)| r.to_string()).collect();
                    self.fail(format!(
                        "rank {} did not reach `{what}` within {} s (runtime.distributed_timeout_s): it died or hangs; stopping the group. Start the run again to resume from its last checkpoint",
                        missing.join(", rank "),
                        self.secs()
                    ));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        if let Some((r, s)) = got.iter().enumerate().find(|(_, s)| **s != seq) {
            self.fail(format!("rank {} is at collective #{s}, rank 0 at #{seq} (`{what}`): the ranks diverged", r + 1));
        }
    }

    fn wait<'a, D: ?Sized, S: mpi::request::Scope<'a>>(&self, mut req: mpi::request::Request<'a, D, S>, deadline: Instant, what: &str) {
        loop {
            match req.test() {
                Ok(_) => return,
                Err(r) => req = r,
            }
            if Instant::now() > deadline {
                self.fail(format!("`{what}` did not complete within {} s (runtime.distributed_timeout_s): another rank died or hangs; stopping the group", self.secs()));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn reduce<T: mpi::datatype::Equivalence + Default + Clone>(&self, send: &[T], what: &str) -> Vec<T> {
        let mut recv = vec![T::default(); send.len()];
        let deadline = Instant::now() + self.timeout;
        mpi::request::scope(|scope| {
            let req = self.comm.immediate_all_reduce_into(scope, send, &mut recv[..], SystemOperation::sum());
            self.wait(req, deadline, what);
        });
        recv
    }
}

impl Collective for MpiGroup {
    fn all_reduce_sum(&self, tensors: &[Tensor], what: &str) -> Result<Vec<Tensor>, DistError> {
        self.arrive(what);
        let f64s = tensors.iter().any(|t| t.dtype() == DType::F64);
        let flat_dtype = if f64s { DType::F64 } else { DType::F32 };
        let Some(all) = super::flatten(tensors, flat_dtype, &candle_core::Device::Cpu)? else { return Ok(Vec::new()) };
        let summed = if f64s { Tensor::new(self.reduce(&all.to_vec1::<f64>()?, what), &candle_core::Device::Cpu)? } else { Tensor::new(self.reduce(&all.to_vec1::<f32>()?, what), &candle_core::Device::Cpu)? };
        Ok(super::unflatten(&summed, tensors)?)
    }

    fn broadcast(&self, bytes: Vec<u8>, what: &str) -> Result<Vec<u8>, DistError> {
        self.arrive(what);
        let deadline = Instant::now() + self.timeout;
        let mut len = bytes.len() as u64;
        mpi::request::scope(|scope| {
            let req = self.comm.process_at_rank(0).immediate_broadcast_into(scope, &mut len);
            self.wait(req, deadline, what);
        });
        let mut buf = if self.rank == 0 { bytes } else { vec![0u8; len as usize] };
        mpi::request::scope(|scope| {
            let req = self.comm.process_at_rank(0).immediate_broadcast_into(scope, &mut buf[..]);
            self.wait(req, deadline, what);
        });
        Ok(buf)
    }

    fn barrier(&self, what: &str) -> Result<(), DistError> {
        self.arrive(what);
        let deadline = Instant::now() + self.timeout;
        let req = self.comm.immediate_barrier();
        self.wait(req, deadline, what);
        Ok(())
    }

    fn library(&self) -> &'static str {
        "mpi"
    }
}
