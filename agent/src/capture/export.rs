//! One volume of a protected VPG as an NBD export: writes go through the
//! VPG's write order (`vpg.rs`), tokens are protected-log seqs.

use super::vpg::VpgCapture;
use crate::nbd::export::{self, BlockExport, BoxFuture};
use std::sync::Arc;

pub struct CaptureExport {
    pub vpg: Arc<VpgCapture>,
    pub volume: u32,
}

impl BlockExport for CaptureExport {
    fn size(&self) -> u64 {
        self.vpg.volumes[self.volume as usize].size
    }

    /// Advertised writable even after a move: a client connected before
    /// then gets EPERM per write, a new one sees the same.
    fn writable(&self) -> bool {
        true
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> export::Result<()> {
        Ok(self.vpg.volumes[self.volume as usize].read_at(buf, offset)?)
    }

    fn write(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, export::Result<u64>> {
        Box::pin(async move { Ok(self.vpg.write(self.volume, offset, data).await?) })
    }

    fn zero(&self, offset: u64, length: u64) -> BoxFuture<'_, export::Result<u64>> {
        Box::pin(async move { Ok(self.vpg.zero(self.volume, offset, length).await?) })
    }

    fn make_durable(self: Arc<Self>, token: u64) -> BoxFuture<'static, export::Result<()>> {
        Box::pin(async move { Ok(self.vpg.make_durable(token).await?) })
    }

    fn last_token(&self) -> u64 {
        self.vpg.log.appended_seq()
    }
}
