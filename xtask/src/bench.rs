//! Benchmarks (filled in by the benchmark issue).

use anyhow::{bail, Result};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("benchmarks are not implemented yet")
}
