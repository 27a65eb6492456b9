//! The `bellwire` binary: parse arguments, load config, run the server.

use std::{path::PathBuf, process::ExitCode};

use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    limit_allocator_retention();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("BELLWIRE_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,ruma_state_res=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let mut config_path: Option<PathBuf> = None;
    let mut rotate = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => config_path = args.next().map(PathBuf::from),
            "--rotate-signing-key" => rotate = true,
            "--help" | "-h" => {
                println!(
                    "usage: bellwire [--config FILE] [--rotate-signing-key]\n\
                     --rotate-signing-key: replace the server's signing key (the old one stays published\n\
                     as an old verify key) and exit; run it while the server is stopped.\n\
                     Every config key can be overridden with BELLWIRE_<KEY> (nested keys joined with __)."
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other}; try --help");
                return ExitCode::from(2);
            }
        }
    }
    let config = match bellwire::config::Config::load(config_path.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bellwire: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if rotate {
        return match bellwire::rotate_signing_key(&config) {
            Ok(id) => {
                println!(
                    "bellwire: new signing key {id}; the old one is kept as an old verify key"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bellwire: cannot rotate the signing key: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bellwire: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bellwire::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bellwire: {e}");
            ExitCode::FAILURE
        }
    }
}

/// mimalloc's `purge_delay` option (see its mimalloc.h; the Rust bindings
/// do not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS at once: Argon2's 19 MiB blocks,
/// freed on a blocking-pool thread that then sleeps, would otherwise stay
/// resident (100 MiB after a burst of registrations, where 32 MiB is
/// needed). RocksDB's C++ allocations use glibc's malloc, whose mmap
/// threshold is fixed so that large blocks are returned too.
fn limit_allocator_retention() {
    // SAFETY: setting an allocator option; called before any thread starts.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
