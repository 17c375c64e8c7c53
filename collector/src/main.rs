use collector::{
    app,
    cli::Command,
    config::{self, CliError},
};

fn main() -> std::process::ExitCode {
    let parsed = match config::parse(std::env::args_os().collect()) {
        Ok(p) => p,
        Err(CliError::Clap(e)) => e.exit(),
        Err(CliError::Config(message)) => {
            eprintln!("error: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    match parsed.cli.command {
        Command::Doctor { json } => collector::doctor::run(json),
        Command::Version => {
            println!("collector {}", env!("CARGO_PKG_VERSION"));
            std::process::ExitCode::SUCCESS
        }
        Command::Run(args) if args.print_config => {
            print!("{}", config::render_effective(&parsed.effective));
            std::process::ExitCode::SUCCESS
        }
        Command::Run(args) => {
            collector::logging::init(&args.log_level, args.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("tokio runtime");
            match runtime.block_on(app::run(*args)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    // A setting that cannot be used, found at start-up: a usage error.
                    if e.is::<collector::source::cgroup::CgroupHeld>() {
                        std::process::ExitCode::from(2)
                    } else {
                        std::process::ExitCode::FAILURE
                    }
                }
            }
        }
    }
}
