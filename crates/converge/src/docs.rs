//! `converge completions` and `converge man`: generated from the same
//! clap definition that parses the flags, so they cannot drift from it.

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::exit;
use crate::output::out;

/// Prints the completion script for the asked shell.
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<u8> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "converge", &mut script);
    out!("{}", String::from_utf8_lossy(&script));
    Ok(exit::OK)
}

/// Prints the manifest file's JSON Schema.
pub fn schema() -> anyhow::Result<u8> {
    let schema = converge_model::schema::manifest_schema();
    crate::output::outln!("{}", serde_json::to_string_pretty(&schema)?);
    Ok(exit::OK)
}

/// Writes `converge.1` and one page per command into `--out-dir`.
pub fn man(args: &ManArgs) -> anyhow::Result<u8> {
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", args.out_dir.display()))?;
    clap_mangen::generate_to(Cli::command(), &args.out_dir).map_err(|e| {
        anyhow::anyhow!("cannot write man pages to {}: {e}", args.out_dir.display())
    })?;
    Ok(exit::OK)
}
