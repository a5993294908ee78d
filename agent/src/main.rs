//! `tidemark`: the one binary on the appliance. This file only parses the
//! command line and calls into the library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tidemark::config::Config;

/// musl's allocator maps and unmaps every large buffer (each 1 MiB write
/// paid page faults and zeroing); mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (the Rust bindings do not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Freed memory goes back to the kernel after this long: long enough to
/// reuse buffers within a burst of writes, short enough to keep RSS small.
const ALLOCATOR_PURGE_DELAY_MS: std::os::raw::c_long = 50;

#[derive(Parser)]
#[command(
    name = "tidemark",
    version,
    about = "Continuous, encrypted block replication of VM disks between two appliances",
    long_about = "Tidemark captures every write to a VM's disks through an NBD export on the \
protected appliance, keeps it in a durable local log, ships it over mutually authenticated \
TLS 1.3 to the recovery appliance's journal, and lets you restore any checkpoint bit-exactly.\n\n\
Typical set-up:\n  1. `tidemark keygen --dir /etc/tidemark` on each appliance; exchange the printed fingerprints.\n  \
2. Write a config for each role (see examples/ in the source tree).\n  \
3. `tidemark recovery --config recovery.toml` on the recovery site,\n     \
`tidemark protected --config protected.toml` on the protected site.\n  \
4. Point the hypervisor at nbd://<protected>:10809/<volume>.\n  \
5. `tidemark checkpoints` / `tidemark restore` on the recovery site."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create this appliance's key and self-signed certificate and print its fingerprint.
    Keygen {
        /// Directory for cert.pem and key.pem (key is written mode 0600).
        #[arg(long)]
        dir: PathBuf,
        /// Common name to put in the certificate.
        #[arg(long, default_value = "tidemark")]
        name: String,
        /// Replace an existing key (peers pinned to the old one will refuse us).
        #[arg(long)]
        force: bool,
    },
    /// Print the sha256 fingerprint of a certificate, to pin it on the peer.
    Fingerprint {
        #[arg(long)]
        cert: PathBuf,
    },
    /// Run the protected side: NBD exports, protected log, sender to the recovery peer.
    Protected {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the recovery side: accept pinned peers on the control and data ports, keep journals.
    Recovery {
        #[arg(long)]
        config: PathBuf,
    },
    /// List a VPG's checkpoints on the recovery side (id, time, tag, completeness).
    Checkpoints {
        /// The recovery appliance's config.
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        vpg: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write every volume of a VPG, as it was at a checkpoint, into DIR/<volume>.img.
    Restore {
        /// The recovery appliance's config.
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        vpg: String,
        /// `latest` (newest complete checkpoint), `head` (the journal's durable
        /// end, crash-consistent; RPO 0 in sync mode), a checkpoint id, or a tag.
        #[arg(long, default_value = "latest")]
        checkpoint: String,
        /// Output directory; existing image files there are never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Benchmark helper: compress FILE as the sender would (64 KiB writes in
    /// 4 MiB batches, adaptive zstd) and print MB/s and the ratio.
    #[command(hide = true)]
    BenchCompress { file: PathBuf },
    /// Show each VPG's state, lag, throughput and last checkpoint (either role).
    Status {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    // Give freed memory back soon: the appliance's memory budget is small,
    // and batches come and go in large blocks.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) };
    let cli = Cli::parse();
    init_logging();
    if let Err(e) = run(cli) {
        eprintln!("tidemark: error: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIDEMARK_LOG").unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn recovery_config(path: &std::path::Path) -> Result<tidemark::config::RecoveryConfig> {
    match Config::load(path)? {
        Config::Recovery(r) => Ok(r),
        Config::Protected(_) => {
            bail!("{}: this is a protected-side config; this command runs on the recovery appliance", path.display())
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { dir, name, force } => {
            let fp = tidemark::wire::tls::generate_identity(&dir, &name, force)?;
            println!("wrote {}/cert.pem and {}/key.pem", dir.display(), dir.display());
            println!("{fp}");
        }
        Command::Fingerprint { cert } => {
            println!("{}", tidemark::wire::tls::fingerprint_of_file(&cert)?)
        }
        Command::Protected { config } => match Config::load(&config)? {
            Config::Protected(p) => runtime()?.block_on(tidemark::run::protected::run(p))?,
            Config::Recovery(_) => bail!("{}: role is \"recovery\"; use `tidemark recovery`", config.display()),
        },
        Command::Recovery { config } => match Config::load(&config)? {
            Config::Recovery(r) => runtime()?.block_on(tidemark::run::recovery::run(r))?,
            Config::Protected(_) => bail!("{}: role is \"protected\"; use `tidemark protected`", config.display()),
        },
        Command::Checkpoints { config, vpg, json } => {
            let cfg = recovery_config(&config)?;
            let view = tidemark::recovery::JournalView::open(&cfg.node.data_dir.join("journal"), &vpg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view.index.checkpoints)?);
            } else {
                println!("{:<22} {:<22} {:<10} TAG", "ID", "TIME (UTC)", "STATE");
                for c in &view.index.checkpoints {
                    let state = if c.consistent { "complete" } else { "partial" };
                    println!(
                        "{:<22} {:<22} {:<10} {}",
                        c.id,
                        tidemark::status::format_time_ms(c.time_ms),
                        state,
                        c.tag
                    );
                }
            }
            if let Some(d) = &view.corruption {
                eprintln!("WARNING: journal damaged, checkpoints after it are not listed: {d}");
            }
        }
        Command::Restore { config, vpg, checkpoint, out } => {
            let cfg = recovery_config(&config)?;
            let report = tidemark::recovery::restore::restore(
                &cfg.node.data_dir.join("journal"),
                &vpg,
                &checkpoint,
                &out,
                true,
            )?;
            print!("{}", tidemark::recovery::restore::describe(&report));
        }
        Command::BenchCompress { file } => {
            let data = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let (seconds, wire) = tidemark::wire::batch::bench_compress(&data);
            println!(
                "{:.1} MB/s, {} -> {} bytes ({:.2}x)",
                data.len() as f64 / seconds / 1e6,
                data.len(),
                wire,
                data.len() as f64 / wire as f64
            );
        }
        Command::Status { config, json } => {
            let cfg = Config::load(&config)?;
            let status = tidemark::status::read(&cfg.node().data_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", tidemark::status::render(&status));
            }
        }
    }
    Ok(())
}
