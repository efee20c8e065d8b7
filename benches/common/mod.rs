//! What the bench targets share: the soft-token daemon fixture, the clients, and
//! benchmark groups. Not every target uses every piece.

#![allow(dead_code)]

use std::path::Path;

use harpocrates_daemon::config::raw::{RawAudit, RawSoft};
use harpocrates_daemon::config::{RawConfig, Settings};
use harpocrates_daemon::server::{self, RunningDaemon};

use criterion::{Criterion, Throughput};
use harpocrates::client::{Client, ClientOptions};
use harpocrates::protocol::Request;

/// The SoftHSM2 module, as Debian installs it.
pub const SOFTHSM2_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Initialises a SoftHSM2 token labelled `label` with user PIN `pin` in `dir/tokens`, and
/// points this process's `SOFTHSM2_CONF` at it (before the module is loaded).
pub fn softhsm_token(dir: &Path, label: &str, pin: &str) {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("tokens");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\nobjectstore.backend = file\n", tokens.display()),
    )
    .expect("conf");
    let init = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", "bench-so"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util (apt-get install softhsm2)");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    // SAFETY: set before the module is loaded, while no other thread reads the environment.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
}

/// A fresh SoftHSM2 token labelled `bench` in `dir`, opened through the PKCS#11 backend
/// (logged in with `pin`).
pub fn softhsm_backend(
    dir: &Path,
    pin: &str,
) -> harpocrates_daemon::backend::pkcs11::Pkcs11Backend {
    use harpocrates_daemon::backend::pkcs11::{Pkcs11Backend, Pkcs11Config, TokenChoice, uri};
    softhsm_token(dir, "bench", pin);
    Pkcs11Backend::open(
        Pkcs11Config {
            library_path: SOFTHSM2_MODULE.into(),
            token: TokenChoice::Match(uri::TokenSelector {
                token: Some("bench".into()),
                ..Default::default()
            }),
            name: "pkcs11",
        },
        zeroize::Zeroizing::new(pin.into()),
    )
    .expect("SoftHSM2 token")
}

/// Starts an in-process daemon on a soft token in `dir` (socket `bench.sock`, PIN file
/// `pin`, cheap Argon2id so the fixture starts fast), with audit off.
pub fn soft_daemon(dir: &Path) -> RunningDaemon {
    soft_daemon_audited(dir, None)
}

/// [`soft_daemon`], recording every operation to the hash-chained audit file `audit`
/// when given (journal off, so only the file's cost is measured), else with audit off.
pub fn soft_daemon_audited(dir: &Path, audit: Option<&Path>) -> RunningDaemon {
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(dir.join("pin"), "bench-pin").expect("pin");
        std::fs::set_permissions(dir.join("pin"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }
    let raw = RawConfig {
        socket_path: Some(dir.join("bench.sock")),
        pin_file: Some(dir.join("pin")),
        log_level: Some("warn".into()),
        soft: Some(RawSoft {
            state_dir: Some(dir.join("daemon-state")),
            kdf_memory_kib: Some(1024),
            kdf_iterations: Some(1),
            kdf_parallelism: None,
        }),
        audit: Some(RawAudit {
            file: audit.map(Path::to_owned),
            journal: Some("off".into()),
            ..RawAudit::default()
        }),
        ..RawConfig::default()
    };
    let settings = Settings::validate(raw).expect("settings");
    let backend = harpocrates_daemon::startup::open_backend(&settings).expect("backend");
    server::spawn(settings, backend).expect("daemon")
}

/// The clients every benchmark drives, on one current-thread runtime.
pub struct Clients {
    /// Drives the clients from the benchmark thread.
    pub runtime: tokio::runtime::Runtime,
    /// Auto-batching client (the default options).
    pub batching: Client,
    /// Auto-batching off: concurrent calls are only pipelined.
    pub pipelining: Client,
    /// Four more connections, for several-client variants.
    pub many: Vec<Client>,
}

impl Clients {
    /// Connects every client to the daemon at `socket`.
    pub fn connect(socket: &Path) -> Self {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (batching, pipelining, many) = runtime.block_on(async {
            let batching = Client::connect(socket).await.expect("connect");
            let options = ClientOptions { max_auto_batch: 1, ..ClientOptions::default() };
            let pipelining = Client::connect_with(socket, options).await.expect("connect");
            let mut many = Vec::new();
            for _ in 0..4 {
                many.push(Client::connect(socket).await.expect("connect"));
            }
            (batching, pipelining, many)
        });
        Self { runtime, batching, pipelining, many }
    }
}

/// `DeriveDataKey` on KEK `kek`: a hot context (the data key is cached in the daemon)
/// against a fresh context every time (an HMAC in the token), and a batch of hot ones.
pub fn derive(c: &mut Criterion, group: &str, runtime: &tokio::runtime::Runtime, client: &Client) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    g.bench_function("warm_cache", |b| {
        b.iter(|| runtime.block_on(client.derive_data_key("kek", b"hot", 32)).expect("derive"))
    });
    let mut n = 0u64;
    g.bench_function("cold_cache", |b| {
        b.iter(|| {
            n += 1;
            runtime.block_on(client.derive_data_key("kek", &n.to_le_bytes(), 32)).expect("derive")
        })
    });
    const BATCH: usize = 256;
    g.throughput(Throughput::Elements(BATCH as u64));
    let request = Request::DeriveDataKey { kek: "kek".into(), context: b"hot".to_vec(), len: 32 };
    g.bench_function("warm_cache_batch", |b| {
        b.iter(|| {
            let batch = (0..BATCH).fold(client.batch(), |b, _| b.push(request.clone()));
            runtime.block_on(batch.send()).expect("batch")
        })
    });
    g.finish();
}
