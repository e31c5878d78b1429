//! qfast's own thread pool (so that `set_num_threads` can change it at any time, unlike
//! rayon's global pool). Work is split into chunks whose results never depend on how many
//! threads ran them.

use crate::error::{QfastError, Result};
use rayon::prelude::*;
use std::sync::{Arc, RwLock};

static POOL: RwLock<Option<Arc<rayon::ThreadPool>>> = RwLock::new(None);

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The most threads qfast starts: 4 x the CPU count, at least 256. More threads than CPUs
/// never run faster, and starting them is not free (measured on 2 cores: 256 threads 14 ms,
/// 1024 threads 2.2 s, 5000 threads 16 s).
pub fn max_threads() -> usize {
    cpu_count().saturating_mul(4).max(256)
}

/// Checks a requested thread count against 1..=[`max_threads`]; `what` names its source.
pub fn check_threads(n: u64, what: &str) -> Result<usize> {
    let max = max_threads();
    match usize::try_from(n) {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ if n == 0 => Err(QfastError::InvalidArgument(format!(
            "{what}=0: the thread count must be at least 1"
        ))),
        _ => Err(QfastError::InvalidArgument(format!(
            "{what}={n} is above qfast's maximum of {max} threads (4 x the {} CPUs here, at \
             least 256); pass at most {max}",
            cpu_count()
        ))),
    }
}

fn default_threads() -> usize {
    std::env::var("QFAST_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .and_then(|n| check_threads(n, "QFAST_NUM_THREADS").ok())
        .unwrap_or_else(cpu_count)
}

fn build(n: usize) -> Result<Arc<rayon::ThreadPool>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("qfast-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| QfastError::InvalidArgument(format!("cannot start {n} threads: {e}")))
}

fn pool() -> Result<Arc<rayon::ThreadPool>> {
    if let Some(p) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return Ok(p.clone());
    }
    let mut slot = POOL.write().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        *slot = Some(build(default_threads())?);
    }
    Ok(slot.as_ref().expect("just set").clone())
}

/// Validates `QFAST_NUM_THREADS` (called at import so a bad value fails early).
pub fn check_env() -> Result<()> {
    match std::env::var("QFAST_NUM_THREADS") {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => check_threads(n, "QFAST_NUM_THREADS")
                .map(|_| ())
                .map_err(|e| QfastError::InvalidArgument(format!("{e}, or unset it"))),
            _ => Err(QfastError::InvalidArgument(format!(
                "QFAST_NUM_THREADS={v:?} is not a positive integer; unset it or set e.g. 4"
            ))),
        },
        _ => Ok(()),
    }
}

/// Sets the number of threads qfast's kernels use from now on.
pub fn set_num_threads(n: usize) -> Result<()> {
    let n = check_threads(n as u64, "num_threads")?;
    let new = build(n)?;
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(new);
    Ok(())
}

pub fn num_threads() -> usize {
    pool().map_or(1, |p| p.current_num_threads())
}

/// Below this many elements of work, waking the pool costs more than it saves (measured:
/// a 384x384 per-channel quantize took 2.3x longer on two threads than on one).
pub const PARALLEL_MIN_ELEMS: usize = 1 << 19;

/// Runs `f` on every item, in parallel on qfast's pool when there is more than one item,
/// more than one thread and at least [`PARALLEL_MIN_ELEMS`] elements of work in all, else
/// inline on the caller's thread. Results keep the items' order.
pub fn map<A, R, F>(items: Vec<A>, work_elems: usize, f: F) -> Result<Vec<R>>
where
    A: Send,
    R: Send,
    F: Fn(A) -> R + Sync + Send,
{
    if items.len() <= 1 || work_elems < PARALLEL_MIN_ELEMS {
        return Ok(items.into_iter().map(f).collect());
    }
    let pool = pool()?;
    if pool.current_num_threads() == 1 {
        return Ok(items.into_iter().map(f).collect());
    }
    Ok(pool.install(|| items.into_par_iter().map(f).collect()))
}
