//! wanproxy: a userspace WAN between two agents on one machine, for tests
//! and benchmarks (no `tc netem` here). Forwards TCP from local ports to
//! targets with one-way latency, a bandwidth cap shared by all connections
//! (one WAN link), and link cuts switched by a control file:
//!   - the file exists and holds "reset": every connection is closed and
//!     new ones are closed at once (a router reboot);
//!   - it holds "blackhole PORT": the same, only for connections to
//!     listen port PORT (one flow lost on the way, the others kept);
//!   - it holds anything else ("blackhole"): bytes stop flowing both ways
//!     but connections stay open (a cable pulled).
//!
//! Removing the file heals the link. Byte counts go to `--stats`.

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const CHUNK_BYTES: usize = 64 * 1024;
const CUT_POLL: Duration = Duration::from_millis(50);

#[derive(Parser)]
#[command(about = "Userspace WAN emulator for Tidemark tests: latency, bandwidth cap, link cuts")]
struct Args {
    /// LISTEN_PORT=TARGET_HOST:PORT, repeatable (one per replication port).
    #[arg(long = "map", required = true)]
    maps: Vec<String>,
    /// One-way latency added to every chunk, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Link capacity in bits per second, shared by all connections; 0 = none.
    #[arg(long, default_value_t = 0)]
    bandwidth_bps: u64,
    /// While this file exists the link is cut (see the top of the source).
    #[arg(long)]
    cut_file: Option<PathBuf>,
    /// Where to write forwarded byte counts (JSON), once a second.
    #[arg(long)]
    stats: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq)]
enum Link {
    Up,
    Reset,
    Blackhole,
}

struct Wan {
    latency: Duration,
    bucket: Option<Mutex<(f64, Instant)>>,
    bytes_per_sec: f64,
    cut_file: Option<PathBuf>,
    forward_bytes: AtomicU64,
    reverse_bytes: AtomicU64,
    cuts_seen: AtomicU64,
}

impl Wan {
    /// The link as connections to listen port `port` see it.
    fn link(&self, port: u16) -> Link {
        let Some(path) = &self.cut_file else { return Link::Up };
        match std::fs::read_to_string(path) {
            Ok(s) if s.trim() == "reset" => Link::Reset,
            Ok(s) => match s.trim().strip_prefix("blackhole ") {
                Some(only) if only.trim() != port.to_string() => Link::Up,
                _ => Link::Blackhole,
            },
            Err(_) => Link::Up,
        }
    }

    /// Waits until `n` bytes fit the shared bandwidth cap.
    async fn pace(&self, n: usize) {
        let Some(bucket) = &self.bucket else { return };
        let wait = {
            let mut b = bucket.lock().expect("bucket");
            let now = Instant::now();
            let burst = self.bytes_per_sec * 0.05;
            b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * self.bytes_per_sec).min(burst) - n as f64;
            b.1 = now;
            if b.0 < 0.0 {
                Duration::from_secs_f64(-b.0 / self.bytes_per_sec)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let bytes_per_sec = args.bandwidth_bps as f64 / 8.0;
    let wan = Arc::new(Wan {
        latency: Duration::from_millis(args.latency_ms),
        bucket: (args.bandwidth_bps > 0).then(|| Mutex::new((0.0, Instant::now()))),
        bytes_per_sec,
        cut_file: args.cut_file.clone(),
        forward_bytes: AtomicU64::new(0),
        reverse_bytes: AtomicU64::new(0),
        cuts_seen: AtomicU64::new(0),
    });
    for map in &args.maps {
        let (port, target) = map.split_once('=').with_context(|| format!("--map {map}: want PORT=HOST:PORT"))?;
        let port: u16 = port.parse().with_context(|| format!("--map {map}: bad port"))?;
        if !target.contains(':') {
            bail!("--map {map}: target needs HOST:PORT");
        }
        let listener = TcpListener::bind(("127.0.0.1", port)).await.with_context(|| format!("listening on {port}"))?;
        tokio::spawn(accept(listener, port, target.to_string(), wan.clone()));
    }
    if let Some(path) = args.stats.clone() {
        let wan = wan.clone();
        tokio::spawn(async move {
            loop {
                let json = format!(
                    "{{\"forward_bytes\":{},\"reverse_bytes\":{},\"cuts_seen\":{}}}",
                    wan.forward_bytes.load(Ordering::Relaxed),
                    wan.reverse_bytes.load(Ordering::Relaxed),
                    wan.cuts_seen.load(Ordering::Relaxed)
                );
                let tmp = path.with_extension("tmp");
                if std::fs::write(&tmp, json).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    eprintln!("wanproxy ready");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

async fn accept(listener: TcpListener, port: u16, target: String, wan: Arc<Wan>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        if wan.link(port) == Link::Reset {
            drop(client);
            continue;
        }
        let target = target.clone();
        let wan = wan.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&target).await else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::select! {
                _ = pipe(cr, sw, wan.clone(), port, true) => {}
                _ = pipe(sr, cw, wan.clone(), port, false) => {}
                _ = watch_reset(wan.clone(), port) => {}
            }
        });
    }
}

async fn watch_reset(wan: Arc<Wan>, port: u16) {
    loop {
        if wan.link(port) == Link::Reset {
            wan.cuts_seen.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tokio::time::sleep(CUT_POLL).await;
    }
}

/// One direction: read chunks, hold each for the latency, pace, write.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    wan: Arc<Wan>,
    port: u16,
    forward: bool,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async {
        while let Some((at, chunk)) = rx.recv().await {
            let due = at + wan.latency;
            tokio::time::sleep_until(due.into()).await;
            while wan.link(port) == Link::Blackhole {
                tokio::time::sleep(CUT_POLL).await;
            }
            wan.pace(chunk.len()).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            let counter = if forward { &wan.forward_bytes } else { &wan.reverse_bytes };
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    };
    tokio::join!(reader, writer);
}
