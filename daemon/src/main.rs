//! `harpocratesd`: parse flags, validate configuration, open the token, serve.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use harpocrates_daemon::config::{Args, Settings};
use harpocrates_daemon::server::ListenError;
use harpocrates_daemon::startup::{self, StartupError};
use harpocrates_daemon::{logging, server};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// Configuration or token.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// The socket (bound or passed by systemd) or the audit file.
    #[error(transparent)]
    Listen(#[from] ListenError),
}

impl Failure {
    /// 78 (EX_CONFIG) for configuration errors, 1 otherwise.
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Startup(e) => e.exit_code(),
            Failure::Listen(_) => 1,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("harpocratesd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    let settings = Settings::from_args(args).map_err(StartupError::from)?;
    logging::init(&settings.log_level);
    if args.check_config {
        // A PIN that cannot log in is a broken configuration too: open the token, log in,
        // and let it go again.
        let backend = startup::open_backend(&settings)?;
        backend.finalize();
        println!(
            "configuration OK ({} backend, token '{}', socket {})",
            settings.backend.name(),
            backend.token_info().label,
            settings.socket_path.display()
        );
        return Ok(());
    }
    // A socket systemd passed is checked before the token is opened: a unit-file mistake
    // should not cost a login.
    let service = server::Service::from_env(args)?;
    let backend = startup::open_backend(&settings)?;
    let dev = settings.dev;
    let backend_name = settings.backend.name();
    let sessions = settings.max_sessions;
    let activated = service.activated.is_some();
    server::run(settings, backend, service, move |path| {
        tracing::info!(socket = %path.display(), activated, backend = backend_name, sessions, "ready");
        if dev {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "harpocratesd (dev, embedded soft token) listening on {}",
                path.display()
            );
            let _ = writeln!(
                out,
                "harpoctl finds it by default; other clients: HARPOCRATES_SOCKET={}",
                path.display()
            );
            let _ = out.flush();
        }
    })?;
    tracing::info!("stopped");
    Ok(())
}
