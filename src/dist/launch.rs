//! Which launcher started this process, from its environment: `mpirun` (Open MPI's `OMPI_COMM_WORLD_*`, or
//! PMI's `PMI_RANK` / `PMI_SIZE`), `torchrun` (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`) or Slurm (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_STEP_NODELIST`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    Mpirun,
    Torchrun,
    Slurm,
}

impl Launcher {
    pub fn name(self) -> &'static str {
        match self {
            Self::Mpirun => "mpirun",
            Self::Torchrun => "torchrun",
            Self::Slurm => "Slurm",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub launcher: Launcher,
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    /// The rendezvous (NCCL's unique id): `MASTER_ADDR:MASTER_PORT`, or under Slurm the first node of the
    /// step's node list and `MASTER_PORT` (default 29500).
    pub master: Option<(String, u16)>,
}

/// The launch described by this process's environment, if any.
pub fn detect() -> Option<Launch> {
    from_env(|k| std::env::var(k).ok())
}

/// [`detect`] over any environment (for tests).
pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<Launch> {
    let num = |k: &str| var(k).and_then(|v| v.trim().parse::<usize>().ok());
    let port = var("MASTER_PORT").and_then(|p| p.trim().parse::<u16>().ok());
    if let (Some(rank), Some(world)) = (num("OMPI_COMM_WORLD_RANK").or(num("PMI_RANK")), num("OMPI_COMM_WORLD_SIZE").or(num("PMI_SIZE"))) {
        let local_rank = num("OMPI_COMM_WORLD_LOCAL_RANK").or(num("MPI_LOCALRANKID")).unwrap_or(0);
        let master = var("MASTER_ADDR").zip(port);
        return Some(Launch { launcher: Launcher::Mpirun, rank, world, local_rank, master });
    }
    if let (Some(rank), Some(world)) = (num("RANK"), num("WORLD_SIZE")) {
        let master = var("MASTER_ADDR").map(|a| (a, port.unwrap_or(29500)));
        return Some(Launch { launcher: Launcher::Torchrun, rank, world, local_rank: num("LOCAL_RANK").unwrap_or(0), master });
    }
    if let (Some(rank), Some(world)) = (num("SLURM_PROCID"), num("SLURM_NTASKS")) {
        let first = var("MASTER_ADDR").or_else(|| var("SLURM_STEP_NODELIST").or(var("SLURM_JOB_NODELIST")).and_then(|l| first_node(&l)));
        return Some(Launch { launcher: Launcher::Slurm, rank, world, local_rank: num("SLURM_LOCALID").unwrap_or(0), master: first.map(|a| (a, port.unwrap_or(29500))) });
    }
    None
}

/// The first host of a Slurm node list: `gpu[03-05,07],cpu1` → `gpu03`.
pub fn first_node(list: &str) -> Option<String> {
    let head = list.split(',').next()?.trim();
    match head.split_once('[') {
        None => Some(head.to_string()).filter(|h| !h.is_empty()),
        Some((prefix, rest)) => {
            let first = rest.trim_end_matches(']').split(['-', ',']).next()?;
            Some(format!("{prefix}{first}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: std::collections::HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn launchers_are_read_from_their_environments() {
        assert_eq!(from_env(env(&[])), None);
        let m = from_env(env(&[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1")])).unwrap();
        assert_eq!((m.launcher, m.rank, m.world, m.local_rank, m.master), (Launcher::Mpirun, 1, 2, 1, None));
        let t = from_env(env(&[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "3"), ("MASTER_ADDR", "node0"), ("MASTER_PORT", "29400")])).unwrap();
        assert_eq!((t.launcher, t.rank, t.world, t.local_rank), (Launcher::Torchrun, 3, 8, 3));
        assert_eq!(t.master, Some(("node0".to_string(), 29400)));
        let s = from_env(env(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "1"), ("SLURM_STEP_NODELIST", "gpu[03-05,07]")])).unwrap();
        assert_eq!((s.launcher, s.rank, s.world, s.local_rank), (Launcher::Slurm, 5, 8, 1));
        assert_eq!(s.master, Some(("gpu03".to_string(), 29500)));
    }

    #[test]
    fn slurm_node_lists_give_their_first_host() {
        assert_eq!(first_node("gpu[03-05,07],cpu1").as_deref(), Some("gpu03"));
        assert_eq!(first_node("node7").as_deref(), Some("node7"));
        assert_eq!(first_node("a12,b3").as_deref(), Some("a12"));
    }
}
