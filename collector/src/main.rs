use clap::Parser as _;
use collector::{
    app,
    cli::{Cli, Command},
};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor => {
            let checks = collector::doctor::checks();
            print!("{}", collector::doctor::report(&checks));
            match collector::doctor::capture_verdict(&checks) {
                Ok(verdict) => {
                    println!("\n{verdict}");
                    std::process::ExitCode::SUCCESS
                }
                Err(why) => {
                    println!("\n{why}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Version => {
            println!("collector {}", env!("CARGO_PKG_VERSION"));
            std::process::ExitCode::SUCCESS
        }
        Command::Run(args) => {
            init_logging(&args.log_level);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("tokio runtime");
            match runtime.block_on(app::run(*args)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
