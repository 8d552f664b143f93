//! The `hpcstage` binary: parse arguments, load settings, run one command, print the
//! error chain once and map the outcome to an exit code. No copy or SLURM logic here.

mod args;
mod commands;
mod config;
mod exit;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command, ConfigCommand, ManifestCommand, TemplateCommand};
use crate::exit::ExitStatus;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitStatus::of_clap(&e).into();
        }
    };
    match run(cli) {
        Ok(status) => status.into(),
        Err(err) => {
            output::error(error_chain(&err));
            if let Some(hint) = commands::hint(&err) {
                output::note(format!("hint: {hint}"));
            }
            ExitStatus::of_error(&err).into()
        }
    }
}

/// The error and its causes on one line, like anyhow's `{:#}`. Library errors print an
/// operating-system cause in their own message and do not return it again as `source()`
/// (`staging::Error::Io` and `SshConnect`, `LocalError::Io`, `TemplateError::Io`,
/// `ReleaseError::Io`, `slurm::Error::Spawn`), so each cause is printed once.
fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<ExitStatus> {
    output::set_quiet(cli.global.quiet);
    if let Command::Epilogue(args) = &cli.command {
        // Before loading config: a broken config file must not fail an Epilog.
        return Ok(commands::epilogue::run(&cli.global, args));
    }
    // Before loading config too: these set up or check the config, or need none.
    match &cli.command {
        Command::Completions { shell } => return Ok(commands::completions::completions(*shell)),
        Command::Manpages { dir } => return commands::completions::manpages(dir),
        Command::Config(ConfigCommand::Init(args)) => return commands::config::init(args),
        Command::Doctor(args) => return commands::doctor::run(&cli.global, args),
        _ => {}
    }
    // Long copies stop cleanly on Ctrl-C or SIGTERM (see hpcstage_staging::interrupt).
    hpcstage_staging::interrupt::install();
    let settings = config::load(&cli.global)?;
    hpcstage_staging::storage::S3Options::set_process(settings.s3.clone());
    match &cli.command {
        Command::Ingest(args) => commands::ingest::run(&settings, args),
        Command::Manifest(ManifestCommand::Create(args)) => {
            commands::manifest::create(&settings, args)
        }
        Command::Manifest(ManifestCommand::Verify(args)) => {
            commands::manifest::verify(&settings, args)
        }
        Command::Stage(args) => commands::stage::run(&settings, args),
        Command::Config(ConfigCommand::Show { json }) => commands::config::show(&settings, *json),
        Command::Demo(args) => commands::demo::run(&settings, args),
        Command::Status(args) => commands::status::run(&settings, args),
        Command::Template(TemplateCommand::List { json }) => {
            commands::template::list(&settings, *json)
        }
        Command::Template(TemplateCommand::Show { name }) => {
            commands::template::show(&settings, name)
        }
        Command::Template(TemplateCommand::Render(args)) => {
            commands::template::render(&settings, args)
        }
        Command::Submit(args) => commands::submit::run_submit(&settings, args),
        Command::StageAndRun(args) => commands::submit::run_stage_and_run(&settings, args),
        Command::Pull(args) => commands::pull::run(&settings, args),
        Command::Retry(args) => commands::retry::run(&settings, args),
        Command::Dismiss(args) => commands::dismiss::run(&settings, args),
        Command::Release(args) => commands::release::run(&settings, args),
        Command::RunLocal { run } => commands::submit::run_local(&settings, run),
        Command::Epilogue(_) => unreachable!("handled before loading the config"),
        Command::Report(args) => commands::report::run(&settings, args),
        Command::Clean(args) => commands::clean::run(&settings, args),
        Command::Archive(args) => commands::archive::run(&settings, args),
        Command::Copies(args) => commands::copies::run(&settings, args),
        Command::Completions { .. }
        | Command::Manpages { .. }
        | Command::Config(ConfigCommand::Init(_))
        | Command::Doctor(_) => unreachable!("handled before loading the config"),
    }
}
