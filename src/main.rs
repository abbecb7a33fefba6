use std::process::ExitCode;

use clap::Parser;
use custody::cli::{self, args::Cli, args::Command, CliError, ClientError};

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // The gateway spreads sessions over every core; the CLI's sessions are
    // cheap byte pumps, cheaper still without cross-thread wakeups.
    let rt = match cli.command {
        Command::Serve(_) => tokio::runtime::Runtime::new(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("custody: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    exit_code(rt.block_on(dispatch(cli.command)))
}

async fn dispatch(cmd: Command) -> Result<ExitCode, CliError> {
    match cmd {
        Command::Serve(args) => cli::serve::run(args).await,
        Command::Connect(args) => cli::connect::run(args).await,
        Command::Exec(args) => cli::exec::run(args).await,
        Command::Review { command } => cli::review::run(command).await,
        Command::Delegate(args) => cli::delegate::run(args).await,
        Command::Mcp(args) => cli::mcp::run(args).await,
        Command::Revoke(args) => cli::revoke::run(args).await,
        Command::Sessions(args) => cli::sessions::run(args).await,
        Command::Replay(args) => cli::replay::run(args).await,
        Command::Verify(args) => cli::verify::run(args).await,
        Command::Ui(args) => cli::ui::run(args).await,
        Command::Config { command } => cli::config::run(command),
        Command::Dev { command } => cli::dev::run(command).await,
    }
}

/// A gateway refusal exits 2 (held: 3), a remote command with its own
/// status, anything else 1; the message and its causes go to stderr.
fn exit_code(result: Result<ExitCode, CliError>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(CliError::Client(ClientError::RemoteExit { status })) => ExitCode::from(status),
        Err(CliError::Client(ce)) => {
            let audit = ce
                .audit_id()
                .map(|a| format!(" (audit id {a})"))
                .unwrap_or_default();
            eprintln!("custody: error: {ce}{audit}");
            ExitCode::from(ce.exit_code() as u8)
        }
        Err(e) => {
            eprintln!("custody: error: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
