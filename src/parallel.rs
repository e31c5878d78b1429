//! qfast's own thread pool (so that `set_num_threads` can change it at any time, unlike
//! rayon's global pool). Work is split into chunks whose results never depend on how many
//! threads ran them.

use crate::error::{QfastError, Result};
use rayon::prelude::*;
use std::sync::{Arc, RwLock};

static POOL: RwLock<Option<Arc<rayon::ThreadPool>>> = RwLock::new(None);

fn default_threads() -> usize {
    std::env::var("QFAST_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
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
        Ok(v) if !v.trim().is_empty() && v.trim().parse::<usize>().map_or(true, |n| n == 0) => {
            Err(QfastError::InvalidArgument(format!(
                "QFAST_NUM_THREADS={v:?} is not a positive integer; unset it or set e.g. 4"
            )))
        }
        _ => Ok(()),
    }
}

/// Sets the number of threads qfast's kernels use from now on.
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(QfastError::InvalidArgument(
            "num_threads must be at least 1".to_string(),
        ));
    }
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
