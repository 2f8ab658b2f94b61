//! `converge publish`: validate as `validate` does, then publish the
//! revision to Consul KV (or roll back).

use converge_agent::publish::{self, Action, Options, Published};
use converge_agent::validate;

use crate::cli::{Cli, Format, PublishArgs};
use crate::exit;
use crate::output::outln;

/// Runs `publish`; 0 when `desired` names the revision, 1 otherwise.
pub fn run(cli: &Cli, args: &PublishArgs) -> anyhow::Result<u8> {
    if cli.published {
        anyhow::bail!("publish reads --manifests and --templates; drop --published");
    }
    let config = Box::new(cli.consul("publish")?);
    let opts = Options {
        keys: cli.keys()?,
        force: args.force,
        expect_revision: args.expect_revision.clone(),
        publisher: args.publisher.clone().unwrap_or_else(|| publisher(cli)),
        history: usize::from(args.history),
    };
    if args.rollback {
        let done = publish::run(*config, Action::Rollback, &opts)?;
        report(args.format, &done, "rolled back to");
        return Ok(exit::OK);
    }
    // Exactly `converge validate`, with the same flags and catalog.
    let (prepared, catalog) = cli.prepare()?;
    let checked = validate::check(&prepared, &catalog, &[])?;
    if !checked.ok() {
        match args.format {
            Format::Json => outln!(
                "{}",
                serde_json::json!({ "published": false, "validation": checked })
            ),
            Format::Text => crate::validate::print(&checked),
        }
        crate::output::error_line("error: the manifests do not validate; nothing was published");
        return Ok(exit::ERROR);
    }
    let bundle = publish::pack(&cli.inputs(), &prepared)?;
    let done = publish::run(*config, Action::Publish(&bundle), &opts)?;
    report(args.format, &done, "published");
    Ok(exit::OK)
}

fn report(format: Format, done: &Published, verb: &str) {
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(done).unwrap_or_default()),
        Format::Text => {
            outln!("revision {}", done.revision);
            if done.unchanged {
                outln!(
                    "{} already names {}; nothing written",
                    done.key,
                    done.revision
                );
                return;
            }
            let previous = done
                .previous
                .as_ref()
                .map_or_else(|| "none".to_string(), ToString::to_string);
            outln!(
                "{verb} {} ({}, {} bytes) in {}; previous {previous}",
                done.revision,
                done.checksum,
                done.size,
                done.key
            );
            for rev in &done.deleted {
                outln!("deleted the bundle of {rev} (beyond the history)");
            }
        }
    }
}

/// `user@host`, for `desired`'s record of who published.
fn publisher(cli: &Cli) -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = cli.node().unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
}
