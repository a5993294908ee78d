//! The NBD server's whole request loop, handshake and transmission, fed
//! the fuzzer's bytes as one client: it must never panic, never hang, and
//! never hold more than its admission allows (run with -rss_limit_mb=256:
//! `make fuzz` does). The export is a small in-memory disk.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use tidemark::nbd::admission::Admission;
use tidemark::nbd::export::{BlockExport, BoxFuture, ExportTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DISK_BYTES: usize = 1 << 20;

struct MemoryDisk(Mutex<Vec<u8>>);

impl BlockExport for MemoryDisk {
    fn size(&self) -> u64 {
        DISK_BYTES as u64
    }
    fn writable(&self) -> bool {
        true
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> anyhow::Result<()> {
        let disk = self.0.lock().unwrap();
        buf.copy_from_slice(&disk[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, anyhow::Result<u64>> {
        Box::pin(async move {
            self.0.lock().unwrap()[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
            Ok(0)
        })
    }
    fn zero(&self, offset: u64, length: u64) -> BoxFuture<'_, anyhow::Result<u64>> {
        Box::pin(async move {
            self.0.lock().unwrap()[offset as usize..(offset + length) as usize].fill(0);
            Ok(0)
        })
    }
    fn make_durable(self: Arc<Self>, _token: u64) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn last_token(&self) -> u64 {
        0
    }
}

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    runtime.block_on(async {
        let table = ExportTable::listed();
        let disk: Arc<dyn BlockExport> = Arc::new(MemoryDisk(Mutex::new(vec![0; DISK_BYTES])));
        table.add(vec![("disk".into(), disk)]).unwrap();
        let admitted = Admission::new().admit("192.0.2.1".parse().unwrap()).await.unwrap();
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let served = tokio::spawn(tidemark::nbd::server::serve_connection(server, table, admitted));
        // The client sends everything, then reads whatever comes back
        // (bounded), so the server is never stuck on a full pipe for ever.
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let send = async {
            let _ = wr.write_all(data).await;
            let _ = wr.shutdown().await;
        };
        let drain = async {
            let mut sink = vec![0u8; 64 << 10];
            let mut total = 0usize;
            while let Ok(n) = rd.read(&mut sink).await {
                if n == 0 || total > 256 << 20 {
                    break;
                }
                total += n;
            }
        };
        tokio::join!(send, drain);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(120), served).await;
    });
});
