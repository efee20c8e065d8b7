//! `harpoctl`: command-line access to harpocratesd, for people (tables) and scripts
//! (`--json`, exit codes by error kind).

mod audit;
mod bench;
mod cli;
mod keymgr;
mod output;

use std::io::{Read, Write};
use std::process::ExitCode;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Parser;
use harpocrates_client::{Client, ClientOptions, Error, KeyAttributes};
use harpocrates_protocol::paths;
use zeroize::Zeroizing;

use cli::{AdminCommand, Cli, Command, CryptArgs, KeysCommand};
use output::Out;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out { json: cli.json };
    // bench drives many connections at once: it gets every core, the rest one thread.
    let mut builder = if matches!(cli.command, Command::Bench(_)) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("harpoctl: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            out.error("usage", &msg);
            ExitCode::from(2)
        }
        Err(Failure::Client(e)) => {
            out.error(error_name(&e), &e.to_string());
            ExitCode::from(exit_code(&e))
        }
        Err(Failure::Io(e)) => {
            out.error("io", &e.to_string());
            ExitCode::FAILURE
        }
        Err(Failure::Exit(code)) => ExitCode::from(code),
    }
}

pub(crate) enum Failure {
    Usage(String),
    Client(Error),
    Io(std::io::Error),
    /// Already reported on stdout (e.g. a broken audit chain): just this exit code.
    Exit(u8),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Client(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

/// The error's name in `--json` output: the wire code's name where there is one.
fn error_name(e: &Error) -> &'static str {
    match e {
        Error::Timeout(_) => "timeout",
        _ => e.code().map_or("client", |c| c.name()),
    }
}

/// Exit code of a timeout, as timeout(1) uses.
const EXIT_TIMEOUT: u8 = 124;

/// sysexits-style codes, so scripts can tell "retry later" from "fix your input".
fn exit_code(e: &Error) -> u8 {
    match e {
        Error::InvalidRequest(_) | Error::FrameTooLarge(_) => 64,
        Error::IntegrityCheckFailed(_) => 65,
        Error::KeyNotFound(_) => 66,
        // EACCES on the socket: this user may not use it, however often it retries.
        Error::Connect { kind: std::io::ErrorKind::PermissionDenied, .. } => 77,
        Error::Connect { .. }
        | Error::ConnectionLost(_)
        | Error::Unavailable(_)
        | Error::NotInitialized(_)
        | Error::SessionInvalid(_) => 69,
        Error::KeyExists(_) => 73,
        Error::Busy(_) => 75,
        Error::UnsupportedVersion(_) | Error::Unsupported(_) | Error::Protocol(_) => 76,
        Error::PermissionDenied(_) => 77,
        Error::InvalidState(_) => 78,
        // Like unavailable: an operator has to fix the daemon's audit storage.
        Error::AuditUnavailable(_) => 69,
        Error::Timeout(_) => EXIT_TIMEOUT,
        _ => 1,
    }
}

async fn run(cli: Cli, out: Out) -> Result<(), Failure> {
    let socket = cli.socket.unwrap_or_else(paths::default_socket_path);
    if let Command::Keys(KeysCommand::Destroy { yes: false, label }) = &cli.command {
        return Err(Failure::Usage(format!(
            "destroying '{label}' cannot be undone; add --yes to confirm"
        )));
    }
    if matches!(cli.command, Command::Metrics { prometheus: true }) && cli.json {
        return Err(Failure::Usage("--json and --prometheus are two formats; choose one".into()));
    }
    // Read a password file before connecting, so a mistake there is reported as such.
    let password = match &cli.command {
        Command::Keys(
            KeysCommand::Backup { password_file, .. } | KeysCommand::Restore { password_file, .. },
        ) => Some(backup_password(password_file.as_deref())?),
        _ => None,
    };
    let options = ClientOptions {
        connect_timeout: cli.timeout.0,
        request_timeout: cli.timeout.0,
        ..ClientOptions::default()
    };
    if let Command::Audit(cmd) = cli.command {
        // Files only (the live tail connects by itself).
        return audit::run(cmd, &socket, options, out).await;
    }
    if let Command::Bench(args) = cli.command {
        // Opens its own connections, as many as asked.
        return bench::run(args, &socket, options, out).await;
    }
    let client = Client::connect_with(&socket, options).await?;
    match cli.command {
        Command::Ping => {
            let started = std::time::Instant::now();
            client.ping().await?;
            out.ping(started.elapsed());
        }
        Command::Health => out.health(&client.health_check().await?),
        Command::Admin(AdminCommand::Reload) => out.reloaded(&client.reload().await?),
        Command::Metrics { prometheus } => out.metrics(&client.metrics().await?, prometheus),
        Command::Random { len, raw, base64 } => {
            let bytes = client.generate_random(len).await?;
            out.random(bytes.expose(), raw, base64)?;
        }
        Command::Keys(KeysCommand::Generate {
            label,
            size,
            extractable,
            wrap,
            unwrap,
            no_encrypt,
            no_decrypt,
        }) => {
            let attributes = KeyAttributes {
                size_bits: size,
                extractable,
                sensitive: true,
                encrypt: !no_encrypt,
                decrypt: !no_decrypt,
                wrap,
                unwrap,
            };
            out.key_generated(&client.generate_key_with_attributes(&label, attributes).await?);
        }
        Command::Keys(KeysCommand::List) => out.keys(&client.list_keys().await?),
        Command::Keys(KeysCommand::Backup { label, base64, .. }) => {
            let password = password.unwrap_or_default();
            let blob = client.backup_key(&label, &password).await?;
            out.backup(&blob, base64)?;
        }
        Command::Keys(KeysCommand::Restore { label, base64, .. }) => {
            let password = password.unwrap_or_default();
            let input = read_stdin()?;
            let blob = if base64 { decode_base64(&input)? } else { input.to_vec() };
            out.key_generated(&client.restore_key(&label, &blob, &password).await?);
        }
        Command::Keys(KeysCommand::Destroy { label, .. }) => {
            client.destroy_key(&label).await?;
            out.destroyed(&label);
        }
        Command::Kek(cmd) => keymgr::kek(&client, out, cmd).await?,
        Command::Datakey(cmd) => keymgr::datakey(&client, out, cmd).await?,
        Command::Envelope(cmd) => keymgr::envelope(&client, cmd).await?,
        // Answered above, before connecting.
        Command::Audit(_) | Command::Bench(_) => {}
        Command::Encrypt(args) => {
            let plaintext = read_stdin()?;
            let ct = client.encrypt(&args.key, &plaintext, aad(&args)).await?;
            out.ciphertext(&ct, args.base64)?;
        }
        Command::Decrypt(args) => {
            let input = read_stdin()?;
            let ciphertext = if args.base64 { decode_base64(&input)? } else { input.to_vec() };
            let pt = client.decrypt(&args.key, &ciphertext, aad(&args)).await?;
            out.plaintext(pt.expose())?;
        }
    }
    std::io::stdout().flush()?;
    Ok(())
}

pub(crate) fn decode_base64(input: &[u8]) -> Result<Vec<u8>, Failure> {
    let text = std::str::from_utf8(input)
        .map_err(|_| Failure::Usage("base64 input is not text".into()))?;
    B64.decode(text.trim()).map_err(|e| Failure::Usage(format!("invalid base64 input: {e}")))
}

/// The backup password: from a file, or the environment; never from the command line.
fn backup_password(file: Option<&std::path::Path>) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let mut raw = match file {
        Some(path) => Zeroizing::new(std::fs::read(path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot read the password file {}: {e}", path.display()),
            )
        })?),
        None => match std::env::var("HARPOCTL_BACKUP_PASSWORD") {
            Ok(v) => Zeroizing::new(v.into_bytes()),
            Err(_) => {
                return Err(Failure::Usage(
                    "give the backup password with --password-file or $HARPOCTL_BACKUP_PASSWORD"
                        .into(),
                ));
            }
        },
    };
    while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        raw.pop();
    }
    Ok(raw)
}

fn aad(args: &CryptArgs) -> Option<&[u8]> {
    args.aad.as_deref().map(str::as_bytes)
}

pub(crate) fn read_stdin() -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin().lock().read_to_end(&mut buf)?;
    Ok(buf)
}
