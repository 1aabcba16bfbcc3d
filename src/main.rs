//! The `strata` command: `serve` runs a node; `produce`, `sql`, `replay` and `streams` are clients.

use clap::{Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;
use strata::client::{Client, ReplayArgs, SqlFormat};
use strata::config::{Config, Overrides};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: the write path allocates and frees a few small strings per
/// event, and glibc's allocator was about a fifth of an ingest node's CPU. Built without
/// transparent huge pages (`no_thp`): with them, re-faulting purged 2 MiB pages (zeroing them)
/// cost more than glibc did.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// strata: a log-structured event store with materialized views.
#[derive(Parser)]
#[command(name = "strata", version, about)]
struct Cli {
    /// Server the client commands talk to.
    #[arg(
        long,
        env = "STRATA_SERVER",
        global = true,
        default_value = "http://127.0.0.1:7070"
    )]
    server: String,
    /// Bearer token the client commands send (see `[auth]` in the README).
    #[arg(long, env = "STRATA_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// PEM certificate(s) to trust for an https:// server (e.g. a self-signed one).
    #[arg(long, env = "STRATA_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: log, store and SQL in one process.
    Serve(Box<Overrides>),
    /// Print the SHA-256 of a token (read from standard input) for `sha256 = …` under [[auth.tokens]].
    HashToken,
    /// Append events: NDJSON (one per line) from a file or standard input, or an Arrow or
    /// Parquet file.
    Produce {
        /// The stream (created on first append).
        stream: String,
        /// Input file, or - for standard input.
        #[arg(default_value = "-")]
        file: String,
        /// Events per request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Input format: NDJSON lines, or an Arrow IPC or Parquet file whose columns are the
        /// event fields (`key`, `id`, `type`, `time`, `data` as JSON text, declared fields),
        /// sent as Arrow IPC streams.
        #[arg(long, value_enum, default_value = "ndjson")]
        format: strata::client::FileFormat,
    },
    /// Run a read-only SQL query.
    Sql {
        /// The query.
        query: String,
        /// Run once the events of this consistency token (printed by `produce`) are applied.
        #[arg(long)]
        after: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: SqlFormat,
    },
    /// Replay stored events as NDJSON.
    Replay {
        /// The stream.
        stream: String,
        #[command(flatten)]
        args: ReplayArgs,
    },
    /// Consume a durable subscription: print its events and acknowledge them as they are
    /// printed (create it with `PUT /v1/subscriptions/NAME`).
    Subscribe {
        /// The subscription.
        name: String,
        /// Take it over from a consumer that holds it now.
        #[arg(long)]
        takeover: bool,
    },
    /// Show the nodes, which node holds which partition, and their lag.
    Cluster,
    /// List streams, or create one.
    Streams {
        #[command(subcommand)]
        action: Option<StreamsAction>,
    },
    /// List materialized views, or rebuild one (create and drop them with `strata sql`).
    Views {
        #[command(subcommand)]
        action: Option<ViewsAction>,
    },
}

#[derive(Subcommand)]
enum ViewsAction {
    /// List views with rows, applied offsets, lag and status (the default).
    List,
    /// Recompute a view from the stored events, with a progress bar, then swap it in.
    Rebuild {
        /// The view.
        name: String,
    },
}

#[derive(Subcommand)]
enum StreamsAction {
    /// List streams with their partitions and offsets (the default).
    List,
    /// Create a stream.
    Create {
        /// Its name: [a-z][a-z0-9_]{0,62}.
        name: String,
        /// Its partition count.
        #[arg(long, default_value_t = 4)]
        partitions: u32,
    },
}

/// Most threads doing blocking work (fsyncs, store commits, scans) at once. Each busy thread
/// keeps an allocator arena of its own, so a bound keeps memory in check under load.
const MAX_BLOCKING_THREADS: usize = 64;

/// A failure of the command: of the node (`serve`) or of a client command.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Node(#[from] strata::Error),
    #[error(transparent)]
    Client(#[from] strata::client::Error),
}

fn main() -> ExitCode {
    strata::allocator::tune();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build();
    let result: Result<(), Failure> = match runtime {
        Ok(runtime) => runtime.block_on(async move {
            match cli.command {
                Command::Serve(overrides) => Ok(serve(*overrides).await?),
                Command::HashToken => Ok(hash_token()?),
                command => {
                    let client = Client::with_options(
                        &cli.server,
                        cli.token.as_deref(),
                        cli.ca_cert.as_deref(),
                    )?;
                    Ok(run_client(client, command).await?)
                }
            }
        }),
        Err(e) => Err(strata::Error::io("cannot start the async runtime", e).into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(overrides: Overrides) -> strata::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,lsm_tree=warn,fjall=warn")
            }),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let config = Config::load(&overrides)?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ],
        )
        .and_then(|b| b.install_recorder())
        .map_err(|e| strata::Error::Config(format!("metrics: {e}")))?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let listener = tokio::net::TcpListener::bind(&config.http)
        .await
        .map_err(|e| strata::Error::io(format!("cannot listen on {}", config.http), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| strata::Error::io("listener", e))?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), log = ?config.log.backend, "strata starting");
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        });
    }
    let scheme = if config.tls.files().is_some() {
        "https"
    } else {
        "http"
    };
    let pg = bind(
        strata::config::listen_address(&config.pg.listen),
        "PostgreSQL",
    )
    .await?;
    let flight = bind(
        strata::config::listen_address(&config.flight.listen),
        "Flight SQL",
    )
    .await?;
    // Announce the addresses once the node is being built; tests read these lines, the HTTP one
    // last.
    for (name, listener) in [("postgres", &pg), ("flight", &flight)] {
        if let Some(addr) = listener.as_ref().and_then(|l| l.local_addr().ok()) {
            println!("strata {name} on {addr}");
        }
    }
    let listeners = strata::node::Listeners {
        http: listener,
        pg,
        flight,
    };
    let node = strata::node::run(config, listeners, Some(metrics), shutdown.clone());
    println!("strata listening on {scheme}://{addr}");
    let _ = std::io::stdout().flush();
    node.await
}

/// A listener on `addr`, unless it is off.
async fn bind(addr: Option<&str>, what: &str) -> strata::Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    tokio::net::TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|e| strata::Error::io(format!("cannot listen for {what} clients on {addr}"), e))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Reads a token from standard input and prints its SHA-256.
fn hash_token() -> strata::client::Result<()> {
    let mut token = String::new();
    std::io::stdin()
        .read_line(&mut token)
        .map_err(|e| strata::client::Error::io("cannot read the token", e))?;
    let token = token.trim_end_matches(['\r', '\n']);
    if token.is_empty() {
        return Err(strata::client::Error::Request(
            "give the token on standard input".into(),
        ));
    }
    println!("{}", strata::auth::hash_token(token));
    Ok(())
}

async fn run_client(client: Client, command: Command) -> strata::client::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match command {
        Command::Serve(_) | Command::HashToken => Ok(()),
        Command::Produce {
            stream,
            file,
            batch,
            format,
        } => {
            let (appended, duplicates, token) = if format != strata::client::FileFormat::Ndjson {
                if file == "-" {
                    return Err(strata::client::Error::Request(
                        "Arrow and Parquet input is read from a file, not standard input".into(),
                    ));
                }
                client
                    .produce_columnar(&stream, std::path::Path::new(&file), format, batch)
                    .await?
            } else if file == "-" {
                client
                    .produce(&stream, std::io::stdin().lock(), batch)
                    .await?
            } else {
                let f = std::fs::File::open(&file)
                    .map_err(|e| strata::client::Error::io(format!("cannot open {file}"), e))?;
                client
                    .produce(&stream, std::io::BufReader::new(f), batch)
                    .await?
            };
            writeln!(
                out,
                "appended {appended} events to {stream} ({duplicates} duplicates skipped)"
            )
            .map_err(|e| strata::client::Error::io("stdout", e))?;
            match token {
                // For `strata sql --after TOKEN`: reads that see these events.
                Some(token) if !token.offsets.is_empty() => writeln!(out, "token: {token}")
                    .map_err(|e| strata::client::Error::io("stdout", e)),
                _ => Ok(()),
            }
        }
        Command::Sql {
            query,
            after,
            format,
        } => client.sql(&query, after.as_deref(), format, &mut out).await,
        Command::Replay { stream, args } => client.replay(&stream, &args, &mut out).await,
        Command::Subscribe { name, takeover } => client.subscribe(&name, takeover, &mut out).await,
        Command::Cluster => client.cluster(&mut out).await,
        Command::Streams {
            action: None | Some(StreamsAction::List),
        } => client.streams(&mut out).await,
        Command::Views {
            action: None | Some(ViewsAction::List),
        } => client.views(&mut out).await,
        Command::Views {
            action: Some(ViewsAction::Rebuild { name }),
        } => {
            let done = client
                .rebuild_view(&name, &mut std::io::stderr().lock())
                .await?;
            writeln!(
                out,
                "rebuilt {name}: {} rows from {} events in {} ms",
                done["rows"], done["done"], done["elapsed_ms"]
            )
            .map_err(|e| strata::client::Error::io("stdout", e))
        }
        Command::Streams {
            action: Some(StreamsAction::Create { name, partitions }),
        } => {
            let created = client.create_stream(&name, partitions).await?;
            writeln!(out, "{created}").map_err(|e| strata::client::Error::io("stdout", e))
        }
    }
}
