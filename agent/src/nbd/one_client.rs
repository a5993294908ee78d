//! The NBD server driven by one scripted client over an in-memory pipe, on
//! a small in-memory disk: what the server's unit tests and its fuzz target
//! (`fuzz/fuzz_targets/nbd_server.rs`) both run. Built for tests and with
//! the `fuzzing` feature only, never into the shipped binary.

use super::admission::Admission;
use super::export::{BlockExport, BoxFuture, ExportTable, Result};
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
        let admitted = Admission::new().admit("192.0.2.1".parse().unwrap()).unwrap();
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

/// The server's own tests, through the scripted client.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::protocol::*;
    use proptest::prelude::*;

    /// One scripted client: the server must end, without a panic.
    fn run_client(bytes: Vec<u8>) -> Vec<u8> {
        run(&bytes).expect("the server ended cleanly")
    }

    /// Flags and OPT_GO for "disk": what a real client sends first.
    fn handshake() -> Vec<u8> {
        handshake_for("disk")
    }

    /// `OPT_GO` for `name`.
    fn handshake_for(name: &str) -> Vec<u8> {
        let mut out = 3u32.to_be_bytes().to_vec();
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&OPT_GO.to_be_bytes());
        out.extend_from_slice(&(name.len() as u32 + 6).to_be_bytes());
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out
    }

    /// `request` with FUA set.
    fn fua_request(command: u16, offset: u64, length: u32) -> Vec<u8> {
        let mut h = request(command, offset, length);
        h[4..6].copy_from_slice(&1u16.to_be_bytes());
        h
    }

    fn request(command: u16, offset: u64, length: u32) -> Vec<u8> {
        let mut h = REQUEST_MAGIC.to_be_bytes().to_vec();
        h.extend_from_slice(&0u16.to_be_bytes());
        h.extend_from_slice(&command.to_be_bytes());
        h.extend_from_slice(&7u64.to_be_bytes());
        h.extend_from_slice(&offset.to_be_bytes());
        h.extend_from_slice(&length.to_be_bytes());
        h
    }

    #[test]
    fn a_write_then_a_read_come_back() {
        let mut bytes = handshake();
        bytes.extend(request(1, 4096, 8));
        bytes.extend_from_slice(b"tidemark");
        bytes.extend(request(0, 4096, 8));
        bytes.extend(request(2, 0, 0));
        let got = run_client(bytes);
        assert!(got.ends_with(b"tidemark"), "{:?}", &got[got.len().saturating_sub(40)..]);
    }

    /// A disk in memory whose writes each wait for a permit of `gate`, then
    /// say so (`entered`), take `hold` in their synchronous part (a
    /// `pwrite` that cannot be interrupted), and are counted once done.
    struct GatedDisk {
        disk: MemoryDisk,
        gate: tokio::sync::Semaphore,
        entered: tokio::sync::Semaphore,
        hold: Duration,
        written: std::sync::atomic::AtomicU32,
    }

    impl GatedDisk {
        fn new(permits: usize, hold: Duration) -> Self {
            GatedDisk {
                disk: MemoryDisk(Mutex::new(vec![0; DISK_BYTES])),
                gate: tokio::sync::Semaphore::new(permits),
                entered: tokio::sync::Semaphore::new(0),
                hold,
                written: Default::default(),
            }
        }
    }

    impl BlockExport for GatedDisk {
        fn size(&self) -> u64 {
            self.disk.size()
        }
        fn writable(&self) -> bool {
            true
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            self.disk.read_at(buf, offset)
        }
        fn write(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, Result<u64>> {
            Box::pin(async move {
                self.gate.acquire().await.unwrap().forget();
                self.entered.add_permits(1);
                std::thread::sleep(self.hold);
                let written = self.disk.write(offset, data).await;
                self.written.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                written
            })
        }
        fn zero(&self, offset: u64, length: u64) -> BoxFuture<'_, Result<u64>> {
            self.disk.zero(offset, length)
        }
        fn make_durable(self: Arc<Self>, _token: u64) -> BoxFuture<'static, Result<()>> {
            Box::pin(async { Ok(()) })
        }
        fn last_token(&self) -> u64 {
            0
        }
    }

    /// While one write is being applied, the next ones are already read
    /// off the socket (the reader and the updater run side by side), and
    /// they are still applied in the order they came: a read after them
    /// sees the last.
    #[test]
    fn writes_are_read_while_the_one_before_is_applied_and_applied_in_order() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        runtime.block_on(async {
            let disk = Arc::new(GatedDisk::new(0, Duration::ZERO));
            let table = ExportTable::listed();
            table.add(vec![("disk".into(), disk.clone() as Arc<dyn BlockExport>)]).unwrap();
            let admitted = Admission::new().admit("192.0.2.1".parse().unwrap()).unwrap();
            // A pipe far smaller than the second write's payload.
            let (mut client, server) = tokio::io::duplex(8 << 10);
            let served = tokio::spawn(super::super::server::serve_connection(server, table, admitted));
            let mut bytes = handshake();
            bytes.extend(request(1, 0, 4096));
            bytes.extend(vec![1u8; 4096]);
            bytes.extend(request(1, 0, 256 << 10));
            bytes.extend(vec![2u8; 256 << 10]);
            let (mut rd, mut wr) = tokio::io::split(&mut client);
            let mut got = Vec::new();
            let sent = async {
                let sent = tokio::time::timeout(Duration::from_secs(5), wr.write_all(&bytes)).await;
                assert!(sent.is_ok(), "the second write was not read while the first waited");
                disk.gate.add_permits(2);
                wr.write_all(&request(0, 0, 8)).await.unwrap();
                wr.write_all(&request(2, 0, 0)).await.unwrap();
                wr.shutdown().await.unwrap();
            };
            let drain = async {
                rd.read_to_end(&mut got).await.unwrap();
            };
            tokio::join!(sent, drain);
            served.await.unwrap().unwrap();
            assert!(got.ends_with(&[2u8; 8]), "{:?}", &got[got.len().saturating_sub(40)..]);
        });
    }

    /// An export whose updates are stuck: each write never returns (a full
    /// log), or returns and is never made durable (sync mode, link down).
    struct StuckDisk {
        writes_return: bool,
    }

    impl BlockExport for StuckDisk {
        fn size(&self) -> u64 {
            64 << 20
        }
        fn writable(&self) -> bool {
            true
        }
        fn read_at(&self, buf: &mut [u8], _offset: u64) -> Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn write(&self, _offset: u64, _data: Vec<u8>) -> BoxFuture<'_, Result<u64>> {
            let returns = self.writes_return;
            Box::pin(async move {
                if !returns {
                    std::future::pending::<()>().await;
                }
                Ok(1)
            })
        }
        fn zero(&self, _offset: u64, _length: u64) -> BoxFuture<'_, Result<u64>> {
            Box::pin(async { Ok(1) })
        }
        /// Never: the wait holds the export while it lasts.
        fn make_durable(self: Arc<Self>, _token: u64) -> BoxFuture<'static, Result<()>> {
            Box::pin(async move {
                let _held = self;
                std::future::pending().await
            })
        }
        fn last_token(&self) -> u64 {
            1
        }
    }

    /// A connection that sends `count` writes of `bytes` (with FUA if
    /// `fua`) to a stuck export holds no more of its source's buffers than
    /// one payload and what it may read ahead from the spare half: another
    /// connection from the same address still has a 4 KiB read answered.
    fn another_connection_is_answered(stuck: StuckDisk, count: usize, bytes: u32, fua: bool) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        runtime.block_on(async move {
            let table = ExportTable::listed();
            let healthy: Arc<dyn BlockExport> = Arc::new(MemoryDisk(Mutex::new(vec![0; DISK_BYTES])));
            table.add(vec![("stuck".into(), Arc::new(stuck) as Arc<dyn BlockExport>), ("ok".into(), healthy)]).unwrap();
            let admission = Admission::new();
            let source = "192.0.2.1".parse().unwrap();
            let (a, b) = (admission.admit(source).unwrap(), admission.admit(source).unwrap());
            let (client_a, server_a) = tokio::io::duplex(1 << 20);
            tokio::spawn(super::super::server::serve_connection(server_a, table.clone(), a));
            let (mut replies_a, mut requests_a) = tokio::io::split(client_a);
            tokio::spawn(async move {
                let mut bytes_out = handshake_for("stuck");
                let header = if fua { fua_request(1, 0, bytes) } else { request(1, 0, bytes) };
                let payload = vec![5u8; bytes as usize];
                for _ in 0..count {
                    bytes_out.extend_from_slice(&header);
                    bytes_out.extend_from_slice(&payload);
                }
                let _ = requests_a.write_all(&bytes_out).await;
                std::future::pending::<()>().await;
            });
            tokio::spawn(async move { tokio::io::copy(&mut replies_a, &mut tokio::io::sink()).await });
            // Let the stuck connection take what it will.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (mut client_b, server_b) = tokio::io::duplex(1 << 20);
            tokio::spawn(super::super::server::serve_connection(server_b, table, b));
            let mut out = handshake_for("ok");
            out.extend(request(0, 0, 4096));
            client_b.write_all(&out).await.unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            let answered = async {
                // The option replies, then a 16-byte reply header and 4 KiB.
                while got.len() < 4096 + 16 + 100 {
                    let n = client_b.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the healthy connection closed");
                    got.extend_from_slice(&buf[..n]);
                }
            };
            tokio::time::timeout(Duration::from_secs(20), answered).await.is_ok()
        })
    }

    /// A write stuck in the log, and FUA writes whose durability never
    /// comes, with the largest payloads: the source's buffers (80 MiB) are
    /// not all held by the stuck connection (review of helper-37: reading
    /// ahead without a bound did that with 3 writes of 32 MiB, or 40 FUA
    /// writes of 16 MiB).
    #[test]
    fn a_stuck_connection_leaves_its_source_buffers_for_the_others() {
        assert!(another_connection_is_answered(StuckDisk { writes_return: false }, 3, 32 << 20, false));
        assert!(another_connection_is_answered(StuckDisk { writes_return: true }, 40, 16 << 20, true));
        assert!(another_connection_is_answered(StuckDisk { writes_return: false }, 200, 1 << 20, false));
    }

    /// Removing an export returns once the write being applied to it is
    /// done, and the writes queued behind it are never applied (review of
    /// helper-38: `remove` returned while a write was still landing in a
    /// replica's file that the journal reopens right after).
    #[test]
    fn removing_an_export_waits_for_the_write_being_applied_and_drops_the_rest() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let disk = Arc::new(GatedDisk::new(100, Duration::from_millis(300)));
            let table = ExportTable::listed();
            table.add(vec![("slow".into(), disk.clone() as Arc<dyn BlockExport>)]).unwrap();
            let admitted = Admission::new().admit("192.0.2.1".parse().unwrap()).unwrap();
            let (mut client, server) = tokio::io::duplex(1 << 20);
            let served = tokio::spawn(super::super::server::serve_connection(server, table.clone(), admitted));
            let mut out = handshake_for("slow");
            for _ in 0..3 {
                out.extend(request(1, 0, 4096));
                out.extend(vec![3u8; 4096]);
            }
            client.write_all(&out).await.unwrap();
            disk.entered.acquire().await.unwrap().forget();
            table.remove(&["slow".to_string()]).await;
            let written = || disk.written.load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(written(), 1, "remove returned before the write being applied was done");
            let ended = tokio::time::timeout(Duration::from_secs(10), served).await;
            assert!(ended.is_ok(), "the connection did not end");
            tokio::time::sleep(Duration::from_millis(700)).await;
            assert_eq!(written(), 1, "a write queued behind was applied after the export was removed");
        });
    }

    /// A write that waits (a full log) does not hold a removal up: it is
    /// dropped, never applied.
    #[test]
    fn removing_an_export_drops_a_write_that_waits() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        runtime.block_on(async {
            let table = ExportTable::listed();
            table
                .add(vec![("stuck".into(), Arc::new(StuckDisk { writes_return: false }) as Arc<dyn BlockExport>)])
                .unwrap();
            let admitted = Admission::new().admit("192.0.2.1".parse().unwrap()).unwrap();
            let (mut client, server) = tokio::io::duplex(1 << 20);
            let served = tokio::spawn(super::super::server::serve_connection(server, table.clone(), admitted));
            let mut out = handshake_for("stuck");
            out.extend(request(1, 0, 4096));
            out.extend(vec![3u8; 4096]);
            client.write_all(&out).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let removed = tokio::time::timeout(Duration::from_secs(60), table.remove(&["stuck".to_string()])).await;
            assert!(removed.is_ok(), "a waiting write held the removal up");
            assert!(tokio::time::timeout(Duration::from_secs(60), served).await.is_ok(), "the connection did not end");
        });
    }

    /// FUA writes waiting for durability (sync mode with the link down)
    /// are let go when their client leaves: nothing of a connection
    /// outlives it.
    #[test]
    fn durable_waits_end_with_their_connection() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        runtime.block_on(async {
            let stuck = Arc::new(StuckDisk { writes_return: true });
            let table = ExportTable::listed();
            table.add(vec![("stuck".into(), stuck.clone() as Arc<dyn BlockExport>)]).unwrap();
            let before = Arc::strong_count(&stuck);
            let admitted = Admission::new().admit("192.0.2.1".parse().unwrap()).unwrap();
            let (mut client, server) = tokio::io::duplex(1 << 20);
            let served = tokio::spawn(super::super::server::serve_connection(server, table.clone(), admitted));
            let mut out = handshake_for("stuck");
            let header = fua_request(1, 0, 4096);
            for _ in 0..10 {
                out.extend_from_slice(&header);
                out.extend(vec![7u8; 4096]);
            }
            client.write_all(&out).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(Arc::strong_count(&stuck) > before, "the waits hold the export");
            drop(client);
            let ended = tokio::time::timeout(Duration::from_secs(120), served).await;
            assert!(ended.is_ok(), "the connection did not end");
            tokio::task::yield_now().await;
            assert_eq!(Arc::strong_count(&stuck), before, "a durable wait outlived its connection");
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Garbage at any point, from the first byte or after a good
        /// handshake, ends in an error or a reply, never a panic or a hang.
        #[test]
        fn the_request_loop_survives_anything(
            after_handshake in any::<bool>(),
            requests in proptest::collection::vec((0u16..9, any::<u64>(), 0u32..(40 << 20)), 0..6),
            garbage in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = if after_handshake { handshake() } else { Vec::new() };
            for (command, offset, length) in requests {
                let offset = if offset % 2 == 0 { offset % DISK_BYTES as u64 } else { offset };
                bytes.extend(request(command, offset, length));
            }
            bytes.extend(garbage);
            run_client(bytes);
        }
    }
}
