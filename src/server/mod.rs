//! `mla serve`: an OpenAI-compatible HTTP server on the batching engine (axum on tokio). The
//! engine runs on a thread of its own (engine_loop.rs), the HTTP side on tokio's; requests and
//! their events cross on channels. SIGINT or SIGTERM stops accepting connections, lets running
//! requests finish within `--shutdown-grace`, aborts the rest and exits 0.

mod api;
mod engine_loop;
mod errors;
mod metrics;
mod responses;
mod routes;
mod text;

use crate::cli::engine_args::EngineArgs;
use crate::cli::loading::{load_config, model_dir, ModelArgs};
use clap::Args;
use engine_loop::{Command, EngineTask, Shared};
use errors::ApiError;
use mla_rt::chat::ChatTemplate;
use mla_rt::error::{Error, Result};
use mla_rt::tokenizer::TextTokenizer;
use routes::AppState;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
    pub host: String,

    /// Port to listen on (0: any free port; the log line says which).
    #[arg(long, default_value_t = 8000, value_name = "PORT")]
    pub port: u16,

    /// The model's name in the API (`model` of requests, `/v1/models`); default: its folder's.
    #[arg(long, value_name = "NAME")]
    pub served_model_name: Option<String>,

    /// Require `Authorization: Bearer KEY` on /v1/*, /tokenize and /detokenize.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,

    /// Most requests waiting to start (choices counted); more are answered 429 with
    /// Retry-After.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_waiting: usize,

    /// Largest request body, in bytes; larger ones are answered 413.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    pub max_body_bytes: usize,

    /// Seconds running requests get to finish after SIGINT/SIGTERM before they are aborted.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub shutdown_grace: f64,

    /// Log level: error, warn, info, debug or trace.
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: tracing::Level,
}

pub fn run(args: ServeArgs) -> Result<()> {
    if !(args.shutdown_grace.is_finite() && args.shutdown_grace >= 0.0) {
        return Err(Error::InvalidInput(format!(
            "--shutdown-grace must be 0 or more seconds, found {}",
            args.shutdown_grace
        )));
    }
    if args.max_waiting == 0 {
        return Err(Error::InvalidInput(
            "--max-waiting must be at least 1".into(),
        ));
    }
    tracing_subscriber::fmt()
        .with_max_level(args.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let dir = model_dir(args.model.model.as_deref())?;
    let config = load_config(&dir)?;
    // One tokenizer, for the HTTP side and the engine's thread.
    let tokenizer = Arc::new(TextTokenizer::load(&dir, &config)?);
    let template = ChatTemplate::load(&dir).map_err(|e| e.to_string());
    let model_name = args.served_model_name.clone().unwrap_or_else(|| {
        dir.file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned())
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::InvalidInput(format!("starting the async runtime: {e}")))?;
    let address = format!("{}:{}", args.host, args.port);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&address))
        .map_err(|e| Error::io(&address, e))?;
    let local = listener.local_addr().map_err(|e| Error::io(&address, e))?;

    // The engine's thread loads the model and serves its channel until the HTTP side is gone.
    let shared = Arc::new(Shared::default());
    let (commands, receiver) = std::sync::mpsc::channel();
    let task = EngineTask {
        commands: receiver,
        shared: shared.clone(),
        tokenizer: tokenizer.clone(),
        engine: args.engine.clone(),
        block_size: args.model.block_size,
        attention: args.model.attention,
        cache_dtype: args.model.kv_cache_dtype,
    };
    let model_args = args.model.clone();
    let engine_shared = shared.clone();
    let engine = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let result = model_args.run(task);
            if let Err(e) = &result {
                tracing::error!("{e}");
            }
            engine_shared.stop(result.as_ref().err().map(|e| e.to_string()));
            result
        })
        .map_err(|e| Error::InvalidInput(format!("starting the engine's thread: {e}")))?;

    let state = Arc::new(AppState {
        shared: shared.clone(),
        commands: Mutex::new(commands.clone()),
        tokenizer,
        template,
        model_name,
        vocab_size: config.vocab_size(),
        max_pos: config.max_position_embeddings(),
        api_key: args.api_key.clone(),
        max_waiting: args.max_waiting,
        max_body_bytes: args.max_body_bytes,
        next_id: AtomicU64::new(0),
    });
    let app = routes::router(state).layer(tower_http::catch_panic::CatchPanicLayer::custom(
        |_: Box<dyn std::any::Any + Send>| {
            use axum::response::IntoResponse;
            ApiError::internal("the request's handling failed (see the server log)").into_response()
        },
    ));
    tracing::info!("listening on http://{local} (model: {})", dir.display());
    let grace = Duration::from_secs_f64(args.shutdown_grace);
    let served = runtime.block_on(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop_signal(shared.clone(), commands, grace))
            .await
    });
    drop(runtime);
    let engine_result = engine
        .join()
        .unwrap_or_else(|_| Err(Error::InvalidInput("the engine's thread panicked".into())));
    served.map_err(|e| Error::io(&address, e))?;
    engine_result
}

/// Resolves at SIGINT or SIGTERM (then tells the engine to wind down), or when the engine's
/// thread has stopped (its model failed to load).
async fn stop_signal(
    shared: Arc<Shared>,
    commands: std::sync::mpsc::Sender<Command>,
    grace: Duration,
) {
    let interrupt = tokio::signal::ctrl_c();
    // Without a SIGTERM handler (it could not be installed) only SIGINT stops the server.
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match terminate.as_mut() {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let engine_stopped = async {
        while !shared.is_stopped() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT: finishing the running requests"),
        _ = sigterm => tracing::info!("SIGTERM: finishing the running requests"),
        _ = engine_stopped => return,
    }
    let _ = commands.send(Command::Shutdown(grace));
}
