//! `weft version`: the client's version.

/// Flags of `weft version`.
#[derive(clap::Args)]
pub struct Args {
    /// Print only the version number.
    #[arg(long, short = 's')]
    pub short: bool,
}

/// Print the version.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let v = env!("CARGO_PKG_VERSION");
    if args.short {
        println!("{v}");
    } else {
        println!("client version: {v}");
    }
    Ok(())
}
