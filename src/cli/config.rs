//! `custody config check`: validates a config file offline.

use std::process::ExitCode;

use super::args::ConfigCommand;
use super::CliError;
use crate::config::Config;

pub fn run(command: ConfigCommand) -> Result<ExitCode, CliError> {
    let ConfigCommand::Check { file } = command;
    let path = file.display().to_string();
    match Config::load(&path) {
        Ok(c) => {
            println!("{path}: OK ({} connections)", c.connections.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
