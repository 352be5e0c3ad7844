//! `mandate serve`: validate everything, then bind, then serve until SIGINT/SIGTERM.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mandate::audit::{AuditLog, Kind, Record};
use mandate::aws::SdkIssuer;
use mandate::broker::{Broker, State};
use mandate::config::{self, Config, LogFormat};
use mandate::store::Store;
use mandate::transport::socket as server;

use super::{Exit, config_error};

pub fn run(config_flag: Option<PathBuf>) -> Exit {
    let path = match config::locate(config_flag.as_deref()) {
        Ok(p) => p,
        Err(e) => return config_error(&e),
    };
    // What the files looked like before they were read: an edit made while the daemon starts
    // is then still seen as a change and reloaded.
    let seen = config::read(&path)
        .map(|c| fingerprint(&path, &c.profiles_dir))
        .unwrap_or_default();
    // Everything is validated before anything is bound.
    let loaded = match config::load(&path) {
        Ok(l) => l,
        Err(e) => return config_error(&e),
    };
    harden_process();
    init_logging(loaded.config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Internal;
        }
    };
    runtime.block_on(serve(path, loaded, seen))
}

/// No core dumps (they would hold credentials), not dumpable (no ptrace or /proc/PID/environ for
/// other processes of the same user), and room for many idle connections.
#[allow(unsafe_code)]
fn harden_process() {
    // SAFETY: setrlimit, getrlimit and prctl are plain system calls; every pointer passed is to a
    // live local value, and failures only leave the defaults in place.
    unsafe {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        let mut nofile = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) == 0
            && nofile.rlim_cur < nofile.rlim_max
        {
            nofile.rlim_cur = nofile.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &nofile);
        }
    }
}

/// `MANDATE_LOG` sets the level of mandate's own logs (error, warn, info, debug, trace; default
/// info). Dependencies always log at warn at most: the AWS SDK's debug and trace output includes
/// signed request details and response bodies, which would put credentials in the log.
fn init_logging(format: LogFormat) {
    let level = std::env::var("MANDATE_LOG")
        .ok()
        .filter(|l| matches!(l.as_str(), "error" | "warn" | "info" | "debug" | "trace"));
    let filter = tracing_subscriber::EnvFilter::new(format!(
        "warn,mandate={}",
        level.as_deref().unwrap_or("info")
    ));
    // Colour only on a terminal: a journal or a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Shared-uid warning of design invariant 7.
fn warn_shared_uids(c: &Config) {
    for line in c.advisory_approvals() {
        tracing::warn!("{line}");
    }
}

async fn serve(path: PathBuf, loaded: config::Loaded, seen: Fingerprint) -> Exit {
    let c = loaded.config.clone();
    // Token files are read (and hashed) before anything is bound.
    let tokens = Arc::new(mandate::transport::http::Tokens::default());
    let problems = tokens.refresh(&c);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        return Exit::Invalid;
    }
    let started = async {
        let (audit, key) = open_audit(&c).await?;
        let daemon_id = mandate::audit::checkpoint::fingerprint(&key.verifying_key());
        let issuer = SdkIssuer::new(&c.region, c.endpoint_url.as_deref(), c.sts_timeout)
            .await
            .map_err(unavailable)?;
        let store = open_store(&c, daemon_id).await?;
        record_start(&audit, loaded.profiles.len()).await?;
        let console = open_console(&c).await?;
        let listeners = bind(&c).await?;
        let broker = build_broker(&c, loaded, issuer, store, audit.clone(), key)?;
        Ok::<_, Exit>((audit, listeners, broker, console))
    };
    let (audit, (listener, http_listener), broker, console) = match started.await {
        Ok(s) => s,
        Err(exit) => return exit,
    };
    let http = c
        .http
        .map(|a| a.to_string())
        .unwrap_or_else(|| "off".into());
    tracing::info!(socket = %c.socket.display(), http = %http, config = %path.display(), "mandate is serving");
    let base_is_temporary = broker.state().base_is_temporary;
    let (stop_console, console_task) = match console {
        Some((console, l, tls)) => {
            tracing::info!(listen = %c.console.as_ref().map(|x| x.listen.to_string()).unwrap_or_default(), url = %console.config.public_url, "approval console is serving");
            let (tx, mut rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(mandate::transport::console::serve(
                broker.clone(),
                console,
                l,
                tls,
                async move {
                    let _ = rx.changed().await;
                },
            ));
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let exit = run_until_stopped(
        &c,
        broker,
        audit,
        tokens,
        (listener, http_listener),
        (path, base_is_temporary, seen),
    )
    .await;
    if let Some(tx) = stop_console {
        let _ = tx.send(true);
    }
    if let Some(t) = console_task {
        let _ = t.await;
    }
    exit
}

/// Prints a start-up failure; the daemon refuses to start.
fn unavailable(e: impl std::fmt::Display) -> Exit {
    eprintln!("error: {e}");
    Exit::Unavailable
}

/// Approvals, revocations, breaker trips, the pause and the session index survive restarts
/// here: the SQLite file in the state directory, or with `[store]` the shared database (team
/// mode), which must answer now or the daemon does not start.
async fn open_store(c: &config::Config, daemon_id: String) -> Result<Arc<dyn Store>, Exit> {
    let refuse = |e: mandate::store::StoreError| {
        eprintln!("error: {e}; refusing to start without the approval store");
        Exit::Unavailable
    };
    let store: Arc<dyn Store> = match &c.store {
        None => Arc::new(mandate::store::SqliteStore::open(&c.store_path()).map_err(refuse)?),
        Some(s) => {
            let opts = pg_options(s);
            let opened = tokio::task::spawn_blocking(move || {
                mandate::store::PgStore::open(&opts, &daemon_id)
            })
            .await
            .map_err(unavailable)?;
            Arc::new(opened.map_err(refuse)?)
        }
    };
    let info = store.describe();
    tracing::info!(kind = info.kind, location = %info.location, shared = info.shared, "opened the store");
    Ok(store)
}

/// `[store]` as the PostgreSQL backend takes it (`store` sits below `config` in the layers).
pub(super) fn pg_options(s: &config::StoreConfig) -> mandate::store::PgOptions {
    use mandate::store::{PgPassword, PgTls};
    mandate::store::PgOptions {
        host: s.url.host.clone(),
        port: s.url.port,
        dbname: s.url.dbname.clone(),
        user: s.url.user.clone(),
        tls: match (s.url.sslmode, &s.ca_file) {
            (config::SslMode::VerifyFull, Some(ca)) => PgTls::VerifyFull {
                ca_file: ca.clone(),
            },
            // The config refuses verify-full without ca_file; an empty trust store would
            // refuse every server anyway.
            (config::SslMode::VerifyFull, None) => PgTls::VerifyFull {
                ca_file: PathBuf::new(),
            },
            (config::SslMode::Disable, _) => PgTls::Disable,
        },
        password: match &s.password {
            None => PgPassword::None,
            Some(config::PasswordSource::File(f)) => PgPassword::File(f.clone()),
            Some(config::PasswordSource::Env(v)) => PgPassword::Env(v.clone()),
        },
        connect_timeout: s.connect_timeout,
        statement_timeout: s.statement_timeout,
        pool: s.pool,
    }
}

/// No audit, no credentials: the log must be usable before anything is bound. A torn final
/// record from a crash is trimmed, and the trim recorded.
async fn open_audit(c: &config::Config) -> Result<(AuditLog, ed25519_dalek::SigningKey), Exit> {
    let key = mandate::audit::checkpoint::load_key(&c.signing_key()).map_err(|e| {
        eprintln!("error: {e}; refusing to start without the audit signing key");
        Exit::Unavailable
    })?;
    let (audit, recovery) =
        AuditLog::open(&c.audit_dir(), key.clone(), c.audit.clone()).map_err(|e| {
            eprintln!("error: {e}; refusing to start without an audit log");
            Exit::Unavailable
        })?;
    if let Some(r) = recovery {
        let mut rec = Record::new(Kind::Recovered);
        rec.message = Some(format!(
            "trimmed a torn final record ({} bytes) from {} after seq {}",
            r.trimmed_bytes, r.segment, r.last_seq
        ));
        tracing::warn!(segment = %r.segment, bytes = r.trimmed_bytes, "recovered the audit log after a crash");
        audit.append_durable(rec).await.map_err(unavailable)?;
    }
    Ok((audit, key))
}

async fn record_start(audit: &AuditLog, profiles: usize) -> Result<(), Exit> {
    let mut started = Record::new(Kind::Started);
    started.message = Some(format!(
        "mandate {} serving {profiles} profile(s)",
        env!("CARGO_PKG_VERSION"),
    ));
    audit
        .append_durable(started)
        .await
        .map(drop)
        .map_err(unavailable)
}

/// The approval console, when configured: its state, listener and TLS. A console that cannot
/// be set up stops the daemon from starting (nothing half-configured serves).
async fn open_console(
    c: &config::Config,
) -> Result<
    Option<(
        Arc<mandate::transport::console::Console>,
        tokio::net::TcpListener,
        Option<tokio_rustls::TlsAcceptor>,
    )>,
    Exit,
> {
    use mandate::transport::console;
    let Some(cc) = &c.console else {
        return Ok(None);
    };
    let state = console::Console::open(cc, &c.state_dir).map_err(unavailable)?;
    let tls = match &cc.tls {
        Some((cert, key)) => Some(console::tls_acceptor(cert, key).map_err(unavailable)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cc.listen)
        .await
        .map_err(|e| {
            eprintln!("error: the console cannot listen on {}: {e}", cc.listen);
            Exit::Unavailable
        })?;
    Ok(Some((Arc::new(state), listener, tls)))
}

/// The HTTP listener (if any) first, then the socket.
async fn bind(
    c: &config::Config,
) -> Result<(tokio::net::UnixListener, Option<tokio::net::TcpListener>), Exit> {
    let http_listener = match c.http {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            eprintln!("error: cannot listen on {addr}: {e}");
            Exit::Unavailable
        })?),
        None => None,
    };
    let listener = server::bind(&c.socket).map_err(unavailable)?;
    Ok((listener, http_listener))
}

fn build_broker(
    c: &config::Config,
    loaded: config::Loaded,
    issuer: SdkIssuer,
    store: Arc<dyn Store>,
    audit: AuditLog,
    key: ed25519_dalek::SigningKey,
) -> Result<Arc<Broker<SdkIssuer>>, Exit> {
    warn_shared_uids(c);
    if issuer.base_is_temporary {
        tracing::info!("base credentials are temporary: sessions are capped at 1 hour");
    }
    let base_is_temporary = issuer.base_is_temporary;
    let parts = mandate::broker::Parts {
        store,
        revoker: Arc::new(issuer.revoker()),
        notifier: mandate::notify::Notifier::start(c.notify.clone()),
        clock: Arc::new(mandate::clock::unix_now),
        vote_key: Arc::new(key),
    };
    Broker::with_parts(State::new(loaded, base_is_temporary), issuer, audit, parts)
        .map(Arc::new)
        .map_err(unavailable)
}

/// Serves until SIGINT or SIGTERM, with the reload loop and the delivery-count flusher beside
/// the transports; then stops gracefully: the last counts, `stopped`, a checkpoint.
async fn run_until_stopped(
    c: &config::Config,
    broker: Arc<Broker<SdkIssuer>>,
    audit: AuditLog,
    tokens: Arc<mandate::transport::http::Tokens>,
    (listener, http_listener): (tokio::net::UnixListener, Option<tokio::net::TcpListener>),
    (path, base_is_temporary, seen): (PathBuf, bool, Fingerprint),
) -> Exit {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_task = http_listener.map(|l| {
        let mut rx = stop_rx.clone();
        tokio::spawn(mandate::transport::http::serve(
            broker.clone(),
            tokens.clone(),
            l,
            async move {
                let _ = rx.changed().await;
            },
        ))
    });
    let reloader = tokio::spawn(reload_loop(
        broker.clone(),
        tokens.clone(),
        path,
        base_is_temporary,
        seen,
    ));
    // Closed delivery windows are written every few seconds (their first delivery already is).
    let flusher = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                // A transient error (the writer busy) is retried at the next tick.
                if let Err(e) = broker.flush_deliveries(false).await {
                    tracing::warn!(error = %e, "could not write delivery counts yet");
                }
            }
        })
    };
    // Team mode: the view of the shared store follows other daemons' changes.
    let follower = broker.shares_store().then(|| {
        let notices = broker.subscribe_store();
        tokio::spawn(
            broker
                .clone()
                .follow(notices, store_freshness(c), stop_rx.clone()),
        )
    });
    server::serve(broker.clone(), listener, shutdown_signal()).await;
    let _ = stop_tx.send(true);
    if let Some(t) = follower {
        let _ = t.await;
    }
    if let Some(t) = http_task {
        let _ = t.await;
    }
    reloader.abort();
    flusher.abort();
    let _ = std::fs::remove_file(&c.socket);
    let _ = broker.flush_deliveries(true).await;
    let _ = audit.append_durable(Record::new(Kind::Stopped)).await;
    let _ = audit.checkpoint_now().await;
    broker.anchor_checkpoints().await;
    tracing::info!("mandate stopped");
    Exit::Ok
}

/// How often the view of a shared store is re-read, and how old it may get.
fn store_freshness(c: &config::Config) -> mandate::broker::Freshness {
    match &c.store {
        Some(s) => mandate::broker::Freshness {
            resync: s.resync,
            stale_after: s.stale_after,
        },
        None => mandate::broker::Freshness::default(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A cheap fingerprint of the config file and the profiles directory.
type Fingerprint = Vec<(PathBuf, u64, SystemTime)>;

fn fingerprint(config: &Path, profiles: &Path) -> Fingerprint {
    let mut out = Vec::new();
    let mut push = |p: PathBuf| {
        if let Ok(m) = std::fs::metadata(&p) {
            out.push((p, m.size(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        }
    };
    push(config.to_owned());
    if let Ok(entries) = std::fs::read_dir(profiles) {
        for e in entries.flatten() {
            push(e.path());
        }
    }
    out.sort();
    out
}

/// What a reload cannot apply: the listeners and the state directory are bound at start.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.http != new.http {
        out.push("[http] listen");
    }
    if old.socket != new.socket {
        out.push("broker.socket");
    }
    if old.state_dir != new.state_dir {
        out.push("broker.state_dir");
    }
    // The database and how it is reached (the staleness and resync periods, the vote
    // signers are read as they are used).
    let conn = |c: &Config| {
        c.store.as_ref().map(|s| {
            (
                s.url.clone(),
                s.ca_file.clone(),
                s.password.clone(),
                s.connect_timeout,
                s.statement_timeout,
                s.pool,
            )
        })
    };
    if conn(old) != conn(new) {
        out.push("[store] (but stale_after, resync, vote_signers)");
    }
    // (delivery_window is read per delivery and does apply.)
    let writer = |c: &Config| mandate::audit::Options {
        delivery_window: std::time::Duration::ZERO,
        ..c.audit.clone()
    };
    if writer(old) != writer(new) {
        out.push("[audit] (but delivery_window)");
    }
    if old.notify != new.notify {
        out.push("[notify]");
    }
    out
}

/// Reloads on SIGHUP or when the config or a profile changes. A bad edit keeps the old state.
async fn reload_loop<I: mandate::aws::Issuer>(
    broker: Arc<Broker<I>>,
    tokens: Arc<mandate::transport::http::Tokens>,
    path: PathBuf,
    base_is_temporary: bool,
    seen: Fingerprint,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    let profiles_dir = broker.state().config.profiles_dir.clone();
    let mut last = seen;
    let mut token_problems: Vec<String> = Vec::new();
    loop {
        let hangup = tokio::select! {
            _ = hup.recv() => true,
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
        };
        // Token files are re-read when they change (rotation without a restart).
        let problems = tokens.refresh(&broker.state().config);
        if problems != token_problems {
            for p in &problems {
                tracing::error!(problem = %p, "agent token unusable; that agent cannot authenticate");
            }
            token_problems = problems;
        }
        if !hangup && fingerprint(&path, &profiles_dir) == last {
            continue;
        }
        last = fingerprint(&path, &profiles_dir);
        match config::load(&path) {
            Ok(loaded) => {
                let n = loaded.profiles.len();
                let restart = needs_restart(&broker.state().config, &loaded.config);
                broker.replace_state(State::new(loaded, base_is_temporary));
                let _ = tokens.refresh(&broker.state().config);
                if restart.is_empty() {
                    tracing::info!(profiles = n, "reloaded the config and profiles");
                } else {
                    tracing::warn!(
                        profiles = n,
                        "reloaded the config and profiles, but {} changed: restart the daemon for that to take effect (the old value is still in use)",
                        restart.join(", ")
                    );
                }
            }
            Err(e) => {
                let detail = match &e {
                    config::ConfigError::Invalid(d) => d
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                    other => other.to_string(),
                };
                tracing::error!(error = %detail, "reload failed; keeping the previous config");
            }
        }
    }
}
