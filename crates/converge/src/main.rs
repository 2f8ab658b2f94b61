//! `converge`: parse flags, run one command, map its outcome to an exit code.
#![forbid(unsafe_code)]

mod apply;
mod cli;
mod docs;
mod drill;
mod fleet;
mod fleet_plan;
mod output;
mod plan;
mod publish;
mod run;
mod status;
mod validate;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, Format};

/// Exit codes shared by every command (plan adds 2 for "changes").
pub(crate) mod exit {
    /// Success, nothing to change.
    pub const OK: u8 = 0;
    /// Any error; nothing was changed unless the message says otherwise.
    pub const ERROR: u8 = 1;
    /// `plan` found changes, or a change the guard holds back.
    pub const CHANGES: u8 = 2;
    /// `apply` (or `validate`) did what it could, but the node is not at
    /// the desired state: a change is held back or a catalog instance was
    /// left out; for `status`, the node does not serve what it should.
    pub const INCOMPLETE: u8 = 3;
}

fn main() -> ExitCode {
    // clap exits 2 on a usage error, which `plan` uses for "changes":
    // map it to 1 so a typo never reads as a pending change.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::ERROR
            } else {
                exit::OK
            };
            let args: Vec<String> = std::env::args().collect();
            if code == exit::ERROR && output::wants_json(&args) {
                output::outln!("{:#}", output::usage_document(&e));
            }
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    cli.init_logging();
    let result = match &cli.command {
        Command::Run(args) => run::run(&cli, args),
        Command::Plan(args) => plan::run(&cli, args),
        Command::Apply(args) => apply::run(&cli, args),
        Command::Status(args) => status::run(&cli, args),
        Command::Validate(args) => validate::run(&cli, args),
        Command::Publish(args) => publish::run(&cli, args),
        Command::Fleet(cmd) => fleet::run(&cli, cmd),
        Command::Drill(args) => {
            // With --published, the revision this node runs.
            let inputs = cli.inputs();
            cli.consul_given()
                .and_then(|consul| drill::run(&inputs.manifests, consul, args))
        }
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
        Command::Schema => docs::schema(),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            if cli.command.format() == Some(Format::Json) {
                output::outln!("{:#}", output::error_document(&e));
            }
            output::error_line(&format!("error: {e:#}"));
            exit::ERROR
        }
    };
    // A closed stdout is the reader's choice; any other failure to write
    // means the output is incomplete, which the exit code must say.
    match output::failure() {
        Some(e) => {
            output::error_line(&format!("error: cannot write output: {e}"));
            ExitCode::from(exit::ERROR)
        }
        None => ExitCode::from(code),
    }
}
