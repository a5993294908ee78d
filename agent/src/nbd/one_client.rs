//! The NBD server driven by one scripted client over an in-memory pipe, on
//! a small in-memory disk: what the server's unit tests and its fuzz target
//! (`fuzz/fuzz_targets/nbd_server.rs`) both run. Built for tests and with
//! the `fuzzing` feature only, never into the shipped binary.

use super::admission::Admission;
use super::export::{BlockExport, BoxFuture, ExportTable};
use anyhow::Result;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The disk's size.
pub const DISK_BYTES: usize = 1 << 20;
/// Replies kept of one run, at most (the client stops reading after that).
const REPLY_BYTES_KEPT_MAX: usize = 256 << 20;
/// How long (virtual time) the server has to end after the client is done.
const SERVER_END_WAIT: Duration = Duration::from_secs(600);

/// A small disk in memory (the server is what is under test).
struct MemoryDisk(Mutex<Vec<u8>>);

impl BlockExport for MemoryDisk {
    fn size(&self) -> u64 {
        DISK_BYTES as u64
    }
    fn writable(&self) -> bool {
        true
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let disk = self.0.lock().unwrap();
        buf.copy_from_slice(&disk[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            self.0.lock().unwrap()[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
            Ok(0)
        })
    }
    fn zero(&self, offset: u64, length: u64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            self.0.lock().unwrap()[offset as usize..(offset + length) as usize].fill(0);
            Ok(0)
        })
    }
    fn make_durable(self: Arc<Self>, _token: u64) -> BoxFuture<'static, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn last_token(&self) -> u64 {
        0
    }
}

/// Serves export "disk" to one client that sends `bytes`, then reads what
/// comes back; time is virtual, so the server's timeouts pass at once.
/// Returns the replies, or why the server did not end cleanly (it hung, or
/// it panicked).
pub fn run(bytes: &[u8]) -> std::result::Result<Vec<u8>, &'static str> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    runtime.block_on(async move {
        let table = ExportTable::listed();
        let disk: Arc<dyn BlockExport> = Arc::new(MemoryDisk(Mutex::new(vec![0; DISK_BYTES])));
        table.add(vec![("disk".into(), disk)]).unwrap();
        let admitted = Admission::new().admit("192.0.2.1".parse().unwrap()).await.unwrap();
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let served = tokio::spawn(super::server::serve_connection(server, table, admitted));
        // The client sends everything, then reads whatever comes back
        // (bounded), so the server is never stuck on a full pipe for ever.
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let send = async {
            let _ = wr.write_all(bytes).await;
            let _ = wr.shutdown().await;
        };
        let mut got = Vec::new();
        let drain = async {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 || got.len() > REPLY_BYTES_KEPT_MAX {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        };
        tokio::join!(send, drain);
        match tokio::time::timeout(SERVER_END_WAIT, served).await {
            Err(_) => Err("the server did not end"),
            Ok(Err(_)) => Err("the server panicked"),
            Ok(Ok(_)) => Ok(got),
        }
    })
}
