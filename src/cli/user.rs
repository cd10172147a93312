//! `ferry user`: manage the credentials file the broker reads with
//! `--credentials`. It never prints a secret it did not just create.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use ferry_broker::auth::credentials::MAX_PASSWORD_BYTES;
use ferry_broker::auth::{Credentials, Mechanism};

use super::CliError;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a credential. A token is generated and printed once, on
    /// standard output; a SCRAM password is read from standard input (one
    /// line).
    Add {
        /// The user's name: the principal it authenticates as.
        name: String,
        /// token (gRPC bearer token), scram-sha-256 or scram-sha-512 (Kafka
        /// SASL).
        #[arg(long)]
        mechanism: Mechanism,
        #[command(flatten)]
        file: CredentialsFile,
    },
    /// Remove a user's credentials: all of them, or one mechanism's.
    Remove {
        name: String,
        /// Remove only this mechanism's credential.
        #[arg(long)]
        mechanism: Option<Mechanism>,
        #[command(flatten)]
        file: CredentialsFile,
    },
    /// Print `{"user","mechanism"}` per credential, never a secret.
    List {
        #[command(flatten)]
        file: CredentialsFile,
    },
}

#[derive(Debug, clap::Args)]
pub struct CredentialsFile {
    /// The credentials file (TOML); `add` creates it, mode 0600.
    #[arg(long, env = "FERRY_CREDENTIALS")]
    credentials: PathBuf,
}

pub fn run(command: UserCommand) -> Result<ExitCode, CliError> {
    match command {
        UserCommand::Add {
            name,
            mechanism,
            file,
        } => {
            let mut creds = Credentials::load_or_empty(&file.credentials)?;
            let token = match mechanism {
                Mechanism::Token => Some(creds.add_token(&name)?),
                scram => {
                    let password = read_password(&name)?;
                    creds.add_scram(&name, scram, password.as_bytes())?;
                    None
                }
            };
            // Saved before the token is shown: a token printed but not
            // stored would be useless.
            creds.save(&file.credentials)?;
            if let Some(t) = token {
                println!("{t}");
                eprintln!(
                    "the token for {name:?} is shown once; it is stored only as a salted hash"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Remove {
            name,
            mechanism,
            file,
        } => {
            let mut creds = Credentials::load(&file.credentials)?;
            let removed = creds.remove(&name, mechanism)?;
            creds.save(&file.credentials)?;
            println!(
                "{}",
                serde_json::json!({ "user": name, "removed": removed })
            );
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::List { file } => {
            let creds = Credentials::load(&file.credentials)?;
            let mut out = std::io::stdout().lock();
            for (user, mechanism) in creds.users() {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "user": user, "mechanism": mechanism.name() })
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One line of standard input, without its line ending; prompts on a
/// terminal.
fn read_password(name: &str) -> Result<String, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password for {name}: ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    // Bounded: at most the limit, its line ending, and one byte to tell
    // a longer line apart.
    let n =
        std::io::Read::take(stdin.lock(), MAX_PASSWORD_BYTES as u64 + 3).read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']);
    if n == 0 || password.is_empty() {
        return Err("no password on standard input".into());
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("a password must be at most {MAX_PASSWORD_BYTES} bytes").into());
    }
    Ok(password.to_string())
}
