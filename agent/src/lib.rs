//! Tidemark: continuous block replication between a protected and a
//! recovery appliance. The pipeline, in the order a write travels it:
//! `capture` (NBD) → `log` (protected log) → `transfer` + `wire` (TLS,
//! batches) → `journal` (recovery journal) → `recovery` (restore).
//! `record` and `segment` are the on-disk and on-wire formats they share.

pub mod access;
pub mod api;
pub mod appliance;
pub mod audit_trail;
pub mod capture;
pub mod clock;
pub mod config;
pub mod coordination;
pub mod durable;
pub mod error_chain;
pub mod extent_hash;
pub mod harden;
pub mod io_failure;
pub mod iscsi;
pub mod journal;
pub mod keyed_locks;
pub mod limits;
pub mod listen;
pub mod log;
pub mod logging;
pub mod names;
pub mod nbd;
pub mod protected_state;
pub mod random;
pub mod record;
pub mod recovery;
pub mod recovery_state;
pub mod run;
pub mod segment;
#[cfg(any(test, feature = "simulate"))]
pub mod simulator;
pub mod slot_file;
pub mod status;
pub mod storage;
pub mod transfer;
pub mod wire;
