//! `keel-citadel`: serves the certificate API, or (`token`) prints a
//! bootstrap token.

use std::process::ExitCode;
use std::time::SystemTime;

use clap::Parser as _;
use keel_citadel::config::{Cli, Command, TokenArgs};
use keel_citadel::identity::Identity;
use keel_citadel::token::Tokens;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Token(args)) = cli.command {
        return token(&args);
    }
    keel_common::init_logging(&cli.serve.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel-citadel: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(keel_citadel::serve::run(cli.serve)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("keel-citadel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `keel-citadel token`: the token on stdout, nothing else.
fn token(args: &TokenArgs) -> ExitCode {
    let identity = match Identity::new(&args.namespace, &args.service_account) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("keel-citadel token: {e}");
            return ExitCode::from(2);
        }
    };
    match Tokens::load_or_create(&args.state_dir) {
        Ok(tokens) => {
            println!("{}", tokens.issue(&identity, args.ttl, SystemTime::now()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keel-citadel token: {e}");
            ExitCode::FAILURE
        }
    }
}
