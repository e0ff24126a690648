//! Data-parallel training on CPU: N ranks, one global batch, gradients summed over MPI.
//!
//! Rank and world size come from the launcher's environment: Open MPI's `OMPI_COMM_WORLD_*`
//! (`mpirun`), torchrun's `RANK`/`WORLD_SIZE`/`LOCAL_RANK`, PMI's `PMI_RANK`/`PMI_SIZE`, or Slurm's
//! `SLURM_PROCID`/`SLURM_NTASKS`/`SLURM_LOCALID` (`srun`). With more than one rank, MPI is started
//! on first use and must agree with the environment (a torchrun launch has no MPI to sum over, and
//! is refused rather than trained as N independent copies).
//!
//! Every rank reads the same global batch from the same deterministic stream and computes the
//! gradients of its own contiguous slice of sequences, each weighted by its share of the *global*
//! batch's unmasked tokens (`micro_batch::accumulate`), so the sum over ranks is exactly the gradient
//! of the global batch: N ranks with batch B follow one process with batch B, token for token. The
//! clipped AdamW step then runs identically everywhere, so parameters never drift apart. Rank 0
//! alone writes checkpoints, metrics and done markers; all ranks resume from the same checkpoint.
//!
//! A rank that dies is noticed by the launcher (`mpirun`, or `srun --kill-on-bad-exit=1`), which
//! ends the others; a rank that fails with an error calls `MPI_Abort` so none waits for it.

use std::ops::Range;
use std::os::raw::c_int;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// This process's place among the ranks of a data-parallel job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    /// Rank on this machine (for devices; unused on CPU).
    pub local_rank: usize,
}

impl World {
    pub const SINGLE: World = World { rank: 0, size: 1, local_rank: 0 };

    /// The world the launcher described in `env` (a variable lookup), or a single process.
    pub fn from_vars(env: impl Fn(&str) -> Option<String>) -> Result<World> {
        let launchers: [(&str, [&str; 3]); 4] = [
            ("Open MPI", ["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"]),
            ("torchrun", ["RANK", "WORLD_SIZE", "LOCAL_RANK"]),
            ("PMI", ["PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"]),
            ("Slurm", ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"]),
        ];
        for (launcher, [rank, size, local]) in launchers {
            let (Some(r), Some(s)) = (env(rank), env(size)) else { continue };
            let parse = |name: &str, v: &str| {
                v.trim().parse::<usize>().with_context(|| format!("{launcher} variable {name}={v:?} is not a number"))
            };
            let world = World {
                rank: parse(rank, &r)?,
                size: parse(size, &s)?,
                local_rank: env(local).map(|v| parse(local, &v)).transpose()?.unwrap_or(0),
            };
            if world.size == 0 || world.rank >= world.size {
                bail!("{launcher} variables say rank {} of {} ranks", world.rank, world.size);
            }
            return Ok(world);
        }
        Ok(World::SINGLE)
    }

    /// This rank's contiguous slice of a global batch of `batch` sequences (the first `batch % size`
    /// ranks take one more).
    pub fn shard(&self, batch: usize) -> Range<usize> {
        let (base, extra) = (batch / self.size, batch % self.size);
        let start = self.rank * base + self.rank.min(extra);
        start..start + base + usize::from(self.rank < extra)
    }

    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }
}

static WORLD: OnceLock<std::result::Result<World, String>> = OnceLock::new();

/// The process's world, read from the environment once; with more than one rank MPI is started here.
pub fn world() -> Result<World> {
    WORLD
        .get_or_init(|| init().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("data-parallel setup: {e}"))
}

fn init() -> Result<World> {
    let world = World::from_vars(|k| std::env::var(k).ok())?;
    if world.size == 1 {
        return Ok(world);
    }
    let (mpi_rank, mpi_size) = mpi_init()?;
    if (mpi_rank, mpi_size) != (world.rank, world.size) {
        bail!(
            "the launcher's environment says rank {} of {}, MPI says rank {mpi_rank} of {mpi_size}: launch the ranks with mpirun, or srun with an MPI plugin (srun --mpi=pmix); torchrun starts no MPI",
            world.rank,
            world.size
        );
    }
    tracing::info!(rank = world.rank, size = world.size, "data-parallel over MPI");
    Ok(world)
}

extern "C" {
    fn atexit(callback: extern "C" fn()) -> c_int;
}

extern "C" fn finalize() {
    // SAFETY: registered only after MPI_Init_thread succeeded; MPI_Finalized guards double calls.
    unsafe {
        let mut done = 0;
        mpi::ffi::MPI_Finalized(&mut done);
        if done == 0 {
            mpi::ffi::MPI_Finalize();
        }
    }
}

fn check(code: c_int, what: &str) -> Result<()> {
    if code != 0 {
        bail!("{what} failed with MPI error {code}");
    }
    Ok(())
}

fn mpi_init() -> Result<(usize, usize)> {
    // SAFETY: plain MPI C calls on the main thread; MPI is initialised once (OnceLock above), and
    // finalised at process exit so `mpirun` sees every rank finish cleanly.
    unsafe {
        let mut provided = 0;
        check(
            mpi::ffi::MPI_Init_thread(
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                mpi::ffi::MPI_THREAD_FUNNELED as c_int,
                &mut provided,
            ),
            "MPI_Init_thread",
        )?;
        atexit(finalize);
        let (mut rank, mut size) = (0, 0);
        check(mpi::ffi::MPI_Comm_rank(mpi::ffi::RSMPI_COMM_WORLD, &mut rank), "MPI_Comm_rank")?;
        check(mpi::ffi::MPI_Comm_size(mpi::ffi::RSMPI_COMM_WORLD, &mut size), "MPI_Comm_size")?;
        Ok((rank as usize, size as usize))
    }
}

/// Sums `values` over all ranks, in place; `scratch` is reused between calls. A no-op on one rank.
pub fn all_reduce_sum(world: &World, values: &mut [f32], scratch: &mut Vec<f32>) -> Result<()> {
    if world.size == 1 {
        return Ok(());
    }
    scratch.clear();
    scratch.extend_from_slice(values);
    for (send, recv) in scratch.chunks(1 << 30).zip(values.chunks_mut(1 << 30)) {
        // SAFETY: both buffers hold `send.len()` floats; every rank calls this with the same length
        // (same model, same step), as MPI_Allreduce requires.
        let code = unsafe {
            mpi::ffi::MPI_Allreduce(
                send.as_ptr().cast(),
                recv.as_mut_ptr().cast(),
                send.len() as c_int,
                mpi::ffi::RSMPI_FLOAT,
                mpi::ffi::RSMPI_SUM,
                mpi::ffi::RSMPI_COMM_WORLD,
            )
        };
        check(code, "MPI_Allreduce")?;
    }
    Ok(())
}

/// Ends every rank at once after this one failed, so none waits forever in a collective.
pub fn abort(world: &World, error: &anyhow::Error) -> ! {
    eprintln!("rank {} of {}: {error:#}; aborting all ranks", world.rank, world.size);
    // SAFETY: MPI is initialised whenever the world has more than one rank.
    unsafe {
        mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 1);
    }
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn every_launcher_style_is_read_and_open_mpi_wins() {
        assert_eq!(World::from_vars(vars(&[])).unwrap(), World::SINGLE);
        assert_eq!(
            World::from_vars(vars(&[("RANK", "3"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1")])).unwrap(),
            World { rank: 3, size: 4, local_rank: 1 }
        );
        assert_eq!(
            World::from_vars(vars(&[("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2"), ("SLURM_LOCALID", "1")])).unwrap(),
            World { rank: 1, size: 2, local_rank: 1 }
        );
        let both = [
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
        ];
        assert_eq!(World::from_vars(vars(&both)).unwrap(), World { rank: 1, size: 2, local_rank: 0 });
        assert!(World::from_vars(vars(&[("RANK", "2"), ("WORLD_SIZE", "2")])).is_err());
        assert!(World::from_vars(vars(&[("RANK", "x"), ("WORLD_SIZE", "2")]))
            .unwrap_err()
            .to_string()
            .contains("RANK"));
    }

    #[test]
    fn shards_cover_the_batch_once_in_order() {
        for (batch, size) in [(8, 2), (8, 3), (2, 4), (1, 1)] {
            let ranges: Vec<_> = (0..size).map(|rank| World { rank, size, local_rank: 0 }.shard(batch)).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges.last().unwrap().end, batch);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start), "{ranges:?}");
        }
        assert_eq!(World { rank: 2, size: 3, local_rank: 0 }.shard(8), 6..8);
    }
}
