//! `--unwind`, `--unwind-memory` and `--unwind-rows`: one set of flags, one
//! default and one budget for the recorder and the agent alike.

use crate::capture::Unwind;

use super::loader;

/// How user stacks are unwound, and the kernel memory for unwind tables.
#[derive(Clone, Debug, clap::Args)]
pub struct UnwindArgs {
    /// How user stacks are unwound: `auto` uses .eh_frame tables where a
    /// binary has them and frame pointers elsewhere.
    #[arg(long, value_enum, default_value_t = Unwind::Auto)]
    pub unwind: Unwind,
    /// Kernel memory for unwind tables (e.g. 64MiB), allocated up front;
    /// tables of binaries no process maps any more are freed, and the least
    /// used ones are evicted when it is full. Default: 1/32 of RAM, from
    /// 32MiB to 128MiB.
    #[arg(long, value_parser = loader::parse_memory)]
    pub unwind_memory: Option<u64>,
    /// The same budget in rows of 16 bytes (older spelling).
    #[arg(long, conflicts_with = "unwind_memory", value_parser = clap::value_parser!(u32).range(2..=i64::from(loader::MAX_ROWS)))]
    pub unwind_rows: Option<u32>,
}

impl UnwindArgs {
    /// Rows of the kernel's table array: `--unwind-rows`, or the budget.
    pub fn rows(&self) -> u32 {
        self.unwind_rows.unwrap_or_else(|| {
            loader::rows_for(self.unwind_memory.unwrap_or_else(loader::default_memory))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        unwind: UnwindArgs,
    }

    #[test]
    fn budget_from_memory_rows_or_the_default() {
        let rows = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
                .map(|c| c.unwind.rows())
        };
        assert_eq!(rows(&["--unwind-memory", "64MiB"]).ok(), Some(4 << 20));
        assert_eq!(rows(&["--unwind-rows", "1000"]).ok(), Some(1000));
        assert!(rows(&["--unwind-rows", "1", "--unwind-memory", "1MiB"]).is_err());
        let default = rows(&[]).unwrap_or(0);
        assert!((2 << 20..=8 << 20).contains(&default), "{default}");
    }
}
