//! `shop`: runs a Spin-manifest application of WebAssembly components.

mod admin;
mod app;
mod bindings;
mod capability;
mod commands;
mod compile_cache;
mod component_build;
mod crash_points;
mod engine;
mod events;
mod guest_output;
mod instance;
mod manifest;
mod metrics;
mod runtime_config;
mod rust_target;
mod state;
mod telemetry;
mod trigger;
mod variables;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shop",
    version,
    about = "Run Spin applications of WebAssembly components on wasmtime"
)]
struct Cli {
    /// Log format on stderr: `auto` is short text on a terminal and JSON lines
    /// otherwise (pipes, files, containers).
    #[arg(long, env = "SHOP_LOG_FORMAT", default_value = "auto", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(clap::Args, Clone)]
pub struct ManifestArgs {
    /// The application manifest.
    #[arg(short = 'f', long = "file", env = "SHOP_FILE", default_value = "spin.toml")]
    pub file: PathBuf,
    /// Spin runtime configuration (backends for stores and databases, Kafka, …).
    /// Default: `runtime-config.toml` beside the manifest, if it exists.
    #[arg(long, env = "SHOP_RUNTIME_CONFIG_FILE")]
    pub runtime_config_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Build missing or stale components, then serve every trigger.
    Up(commands::up::UpArgs),
    /// Run every component's build command.
    Build {
        #[command(flatten)]
        manifest: ManifestArgs,
        /// Only these components.
        components: Vec<String>,
    },
    /// Validate the manifest and runtime config, printing every problem.
    Check {
        #[command(flatten)]
        manifest: ManifestArgs,
    },
    /// Write the build contexts of the Kubernetes images: `OUT/app` (the HTTP half
    /// for containerd-shim-spin) and `OUT/host` (everything, for this host).
    Package {
        #[command(flatten)]
        manifest: ManifestArgs,
        /// Where the two contexts go.
        #[arg(long, default_value = "target/package")]
        out: std::path::PathBuf,
    },
}

/// Default filter for JSON logs: everything an operator's log pipeline may want.
const JSON_LOG_FILTER: &str = "info,wasmtime_wasi_http=warn,cranelift=warn,wasmtime=warn";
/// Default filter for a person at a terminal: what components print, the host's own
/// lifecycle, and anything that went wrong; partition assignments and the like are
/// for the JSON logs (or `SHOP_LOG=info`).
const TEXT_LOG_FILTER: &str = "warn,guest=info,shop::commands=info,shop::trigger::http=info";

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    let text = match format {
        LogFormat::Auto => std::io::stderr().is_terminal(),
        LogFormat::Json => false,
        LogFormat::Text => true,
    };
    let default_filter = if text { TEXT_LOG_FILTER } else { JSON_LOG_FILTER };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if text {
        builder.compact().without_time().with_target(false).init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    capability::sqlite::configure_process();
    let result = match cli.command {
        Command::Up(args) => commands::up::run(args),
        Command::Build { manifest, components } => commands::build::run(&manifest, &components),
        Command::Check { manifest } => commands::check::run(&manifest),
        Command::Package { manifest, out } => commands::package::run(&manifest, &out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
