//! `tidemark`: the one binary on the appliance. This file only parses the
//! command line and calls into the library.

mod cli_access;
mod cli_remote;

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

/// `tidemark checkpoint`'s exit status when the checkpoint is in the
/// protected log but not yet in the recovery journal (EX_TEMPFAIL): a
/// script that goes on only once its checkpoint is safe can tell.
const EXIT_NOT_YET_REPLICATED: i32 = 75;
/// `verify-checkpoint`: a file system or partition table is damaged
/// (EX_DATAERR).
const EXIT_CHECK_FAILED: i32 = 65;
/// `verify-checkpoint`: nothing failed, but not everything could be
/// checked (EX_UNAVAILABLE).
const EXIT_NOT_CHECKED: i32 = 69;

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
5. `tidemark checkpoints` / `tidemark restore` on the recovery site.\n\n\
From a workstation: `tidemark --server https://HOST:4006 --fingerprint sha256:... COMMAND` runs \
status, checkpoints, checkpoint, export, failover, test-failover, move, reverse, move-back, verify, \
clear-alert and audit-log through an appliance's management API (`tidemark --server URL --help`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--config` and `--vpg` of a command run on the recovery appliance.
#[derive(clap::Args)]
struct OnRecovery {
    /// The recovery appliance's config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// The VPG (protection group), as named in the protected side's config.
    #[arg(long)]
    vpg: String,
}

/// `--config` and `--vpg` of a command run on the protected appliance.
#[derive(clap::Args)]
struct OnProtected {
    /// The protected appliance's config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// The VPG (protection group), as named in that config.
    #[arg(long)]
    vpg: String,
}

#[derive(Subcommand)]
enum TestFailover {
    /// Serve the VPG at CHECKPOINT writable, as nbd://<exports.listen>/<vpg>/<volume>/test
    /// and, with [iscsi] set, as the LUNs of target ...:<vpg>:test.
    Start {
        #[command(flatten)]
        at: OnRecovery,
        /// `latest`, `head`, `last-clean` (pinned by the encryption detector), a checkpoint id, or a tag.
        #[arg(long, default_value = "latest")]
        checkpoint: String,
    },
    /// Stop the VPG's test failover and throw its writes away.
    Stop {
        #[command(flatten)]
        at: OnRecovery,
    },
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
    /// List a VPG's checkpoints on the recovery side (id, time, state, tag).
    ///
    /// STATE: complete (restorable), pinned (restorable, kept by a pin),
    /// suspect (after a ransomware alert), partial (taken before the
    /// initial copy finished) or inconsistent (taken during a resync after
    /// bitmap mode); partial and inconsistent ones cannot be restored.
    Checkpoints {
        #[command(flatten)]
        at: OnRecovery,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the tags that name a restorable checkpoint in every one of the given
    /// VPGs (recovery side): the group checkpoints taken on every member
    /// (`group-checkpoint`), to restore, export or fail over each VPG at.
    GroupCheckpoints {
        /// The recovery appliance's config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// A member VPG; name each (at least two).
        #[arg(long = "vpg", required = true, num_args = 1)]
        vpgs: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Insert a tagged checkpoint into a VPG's write order now (protected side,
    /// agent running); `--checkpoint TAG` then works wherever an id does.
    /// Exit status 0 once the recovery journal has it; 75 if it is only in
    /// the protected log when --wait runs out (it follows when the link allows).
    Checkpoint {
        #[command(flatten)]
        at: OnProtected,
        /// A name for it, like "before upgrade" (not a number, "latest" or "head");
        /// at most 256 bytes of UTF-8 (85 characters such as "€", 256 ASCII).
        #[arg(long)]
        tag: String,
        /// How long to wait for the recovery journal to have it.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Take one checkpoint across every member of a checkpoint group
    /// ([[coordination.group]], on the coordinating protected appliance, agent
    /// running): each member's writes are held for a moment, so the checkpoint
    /// is one instant on all of them. Restore every member's VPG at the tag it
    /// prints. Exit status 1, naming the member, if any did not take it.
    GroupCheckpoint {
        /// The coordinating appliance's config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// The group, as named in [[coordination.group]].
        #[arg(long)]
        group: String,
        /// A name for it: the tag is then <name>@<group>@<UTC time> (by default
        /// <group>@<UTC time>), never one used before, so each member's newest
        /// checkpoint with it is this one. The same rules as `checkpoint --tag`.
        #[arg(long)]
        tag: Option<String>,
    },
    /// Clear the encryption detector's alert on a VPG once it has been looked
    /// into (protected side, agent running). A last-clean pin it made stays
    /// at the recovery site until `tidemark unpin`; the next anomaly raises
    /// a new alert at once.
    ClearAlert {
        #[command(flatten)]
        at: OnProtected,
    },
    /// Write every volume of a VPG, as it was at a checkpoint, into DIR/<volume>.img.
    Restore {
        #[command(flatten)]
        at: OnRecovery,
        /// `latest` (newest complete checkpoint), `head` (the journal's durable
        /// end, crash-consistent; RPO 0 in sync mode), `last-clean` (pinned by the
        /// encryption detector), a checkpoint id, or a tag.
        #[arg(long, default_value = "latest")]
        checkpoint: String,
        /// Output directory; existing image files there are never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Pre-load a VPG's replica at the recovery site (recovery agent
    /// stopped, before the protected site first connects) from image files:
    /// a disk shipped to the site, a backup, or a restore of an older
    /// checkpoint. The protected site then compares SHA-256 hashes of 64 KiB
    /// extents and sends only those that differ, not the whole volume.
    /// Refused for a VPG that already has a journal (move it aside first).
    Seed {
        #[command(flatten)]
        at: OnRecovery,
        /// VOLUME=FILE: a raw image of the whole volume (repeat per volume;
        /// volumes not named start as zeros).
        #[arg(long = "image", value_name = "VOLUME=FILE", value_parser = parse_seed_image, required = true)]
        images: Vec<(String, PathBuf)>,
    },
    /// Check the file systems of every volume at a checkpoint, in place
    /// (through a read-only view: nothing is copied or written): the
    /// partition table, then `e2fsck -fn` for ext2/3/4 and `xfs_repair -n`
    /// for XFS. NTFS, FAT, btrfs, LVM and encrypted volumes are not checked.
    /// Needs the kernel NBD client (the appliance has it). The verdict shows
    /// in `tidemark checkpoints`. Exit status 0: verified (every file system
    /// checked clean); 65: a check failed; 69: nothing failed, but something
    /// could not be checked.
    VerifyCheckpoint {
        #[command(flatten)]
        at: OnRecovery,
        /// `latest`, `last-clean`, a checkpoint id or a tag.
        #[arg(long, default_value = "latest")]
        checkpoint: String,
        /// How long one file system's checker may run.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Machine-readable output (the report, as stored).
        #[arg(long)]
        json: bool,
    },
    /// Keep a checkpoint restorable until it is released: the replica never
    /// moves past it, whatever the history window or journal_limit say, so
    /// the journal grows while it holds (status warns). For the moment
    /// before an incident, an upgrade, or an investigation.
    Pin {
        #[command(flatten)]
        at: OnRecovery,
        /// A checkpoint id, a tag, or `latest`.
        #[arg(long)]
        checkpoint: String,
        /// Why, shown in status and the checkpoint list (one line, at most 256 bytes).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Release a pinned checkpoint: the applier may move past it again.
    Unpin {
        #[command(flatten)]
        at: OnRecovery,
        /// The pinned checkpoint's id or tag.
        #[arg(long)]
        checkpoint: String,
    },
    /// Serve every volume of a VPG, as it was at a checkpoint, read-only over
    /// NBD (recovery agent running, [exports] listen set) and, with [iscsi]
    /// set, as the read-only LUNs of target ...:<vpg>:cp<id>; built from the
    /// replica and the journal without copying. Runs until interrupted.
    Export {
        #[command(flatten)]
        at: OnRecovery,
        /// `latest`, `head`, `last-clean` (pinned by the encryption detector), a checkpoint id, or a tag.
        #[arg(long, default_value = "latest")]
        checkpoint: String,
    },
    /// Fail a VPG over to a checkpoint (recovery side, agent running): the
    /// journal up to it goes into the replica, later history is set aside,
    /// the stream for the VPG stops, and the volumes are served writable at
    /// nbd://<exports.listen>/<vpg>/<volume> and, with [iscsi] set, as the
    /// LUNs of target ...:<vpg> (or left as files with --files).
    /// If the protected side is reachable it is told to stop capturing.
    Failover {
        #[command(flatten)]
        at: OnRecovery,
        /// `latest`, `head`, `last-clean` (pinned by the encryption detector), a checkpoint id, or a tag.
        #[arg(long)]
        checkpoint: String,
        /// Leave the recovered volumes as image files; do not serve them.
        #[arg(long)]
        files: bool,
    },
    /// Planned migration (protected side, agent running): refuse new writes,
    /// flush, ship a final checkpoint, wait for the recovery side to make it
    /// durable, then fail over to it. Nothing is lost.
    Move {
        #[command(flatten)]
        at: OnProtected,
        /// How long to wait for the recovery side.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        /// Call off an unfinished move (one that gave up waiting, writes
        /// refused): once the recovery site confirms over the link that it
        /// has not taken over, writes are accepted here again.
        #[arg(long)]
        cancel: bool,
    },
    /// Reverse protection (old protected site, agent running, after a
    /// failover or move): the recovery site sends the VPG back, only the
    /// 64 KiB extents whose hashes differ, then every new write. Waits
    /// until this site is in sync and reports the bytes received.
    Reverse {
        #[command(flatten)]
        at: OnProtected,
        /// How long to wait for the delta copy.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Switch-back (old protected site, under reverse protection and in
    /// sync): the recovery site refuses writes and marks the end of its
    /// log, this site applies it, the recovery site ends its failover, and
    /// the VPG runs here again, protected towards the recovery site by a
    /// new stream whose copy sends only extents that differ (none when
    /// nothing changed). Stop the VM at the recovery site first. If it is
    /// interrupted, run it again to finish, or cancel it.
    MoveBack {
        #[command(flatten)]
        at: OnProtected,
        /// How long to wait for the recovery site at each step.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        /// Call off an unfinished switch-back: the recovery site takes writes
        /// on its live volumes again (refused once the old site applied
        /// everything). Also runs at the recovery site (its config), for an
        /// old site that is gone.
        #[arg(long)]
        cancel: bool,
    },
    /// Online verify (protected side, agent running): per 512 MiB, take a
    /// checkpoint, have the recovery site hash its image there (SHA-256 per
    /// 64 KiB extent), and compare with the volumes while writes go on
    /// (extents written meanwhile are tried again at newer checkpoints,
    /// then counted, not compared). Lists the extents that differ; exit
    /// status 65 if any do and --repair was not given.
    Verify {
        #[command(flatten)]
        at: OnProtected,
        /// Resend the extents that differ, so the recovery site holds them
        /// from then on (older checkpoints keep the damage).
        #[arg(long)]
        repair: bool,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rehearse a failover: writable NBD exports (and iSCSI LUNs) at a
    /// checkpoint whose writes go to scratch and are discarded at `stop`;
    /// replication goes on.
    #[command(subcommand)]
    TestFailover(TestFailover),
    /// Write the appliance's OVF properties onto a CD image for first boot.
    ///
    /// The image (ISO 9660, label TIDEMARK-CFG) goes on the appliance's
    /// CD-ROM before first boot, for ESXi hosts deployed without vCenter
    /// (which do not pass the properties on themselves). The properties are
    /// checked as first boot checks them; nothing is written if one is wrong.
    ConfigIso {
        /// The properties: `tidemark.key = value` lines, `#` for comments
        /// (`tidemark ovf-properties` lists the keys).
        #[arg(long)]
        properties: PathBuf,
        /// The ISO to write (refused if it exists).
        #[arg(long)]
        out: PathBuf,
        /// The size of the appliance's data disk, which the protected log's
        /// size comes from (default: the OVA's, 256 MiB), e.g. 20GiB; its
        /// file system is taken as 90 % of it.
        #[arg(long, value_parser = |s: &str| tidemark::config::parse_bytes(s).map_err(|e| format!("{e:#}")))]
        data_disk: Option<u64>,
    },
    /// First boot of the appliance: write its configuration (tidemark.toml,
    /// network, hostname, resolv.conf, shadow) into OUT from the OVF
    /// environment the hypervisor attached (ovf-env.xml). Writes nothing if
    /// any property is wrong, and says which.
    ApplianceConfig {
        #[arg(long)]
        ovf_env: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Where the data disk is mounted.
        #[arg(long, default_value = "/var/lib/tidemark")]
        data_dir: PathBuf,
    },
    /// List the OVF properties the appliance reads.
    ///
    /// One per line: key, description, the deploy wizard's checks, whether
    /// secret (tab separated). What a `config-iso` properties file may hold,
    /// and what the OVA's ProductSection declares.
    OvfProperties,
    /// Benchmark helper: compress FILE as the sender would (64 KiB writes in
    /// 4 MiB batches, adaptive zstd) and print MB/s and the ratio.
    #[command(hide = true)]
    BenchCompress { file: PathBuf },
    /// Benchmark helper: hash FILE as a copy or a verify does (1 MiB
    /// reads, SHA-256 per 64 KiB extent) and print MB/s.
    #[command(hide = true)]
    BenchHash { file: PathBuf },
    /// Benchmark helper (test build): write a synthetic journal for VPG
    /// --vpg under --journal-root: --checkpoints checkpoints among --bytes
    /// of 1 MiB writes to one volume of --volume-size bytes.
    #[cfg(feature = "test-build")]
    #[command(hide = true)]
    BenchJournal {
        #[arg(long)]
        journal_root: PathBuf,
        #[arg(long)]
        vpg: String,
        #[arg(long, value_parser = |s: &str| tidemark::config::parse_bytes(s).map_err(|e| tidemark::error_chain::Chain(&e).to_string()))]
        volume_size: u64,
        #[arg(long, value_parser = |s: &str| tidemark::config::parse_bytes(s).map_err(|e| tidemark::error_chain::Chain(&e).to_string()))]
        bytes: u64,
        #[arg(long)]
        checkpoints: u64,
    },
    /// Show each VPG's state, lag, throughput and last checkpoint (either role).
    Status {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Lock the appliance down: firewall (default DROP + the port table),
    /// kernel settings (read back), console-only root logins. Fails closed:
    /// if anything fails, the previous rules stay and the exit status is 1.
    Harden {
        #[arg(long)]
        config: PathBuf,
    },
    /// Check every hardening item on the running system; exit status 1 if any fails.
    Audit {
        #[arg(long)]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show the audit trail: who asked for what, when, from where, and how
    /// it ended (docs/audit-trail.md). With --verify, check its hash chain
    /// and name the first broken link (exit status 1).
    AuditLog {
        #[arg(long)]
        config: PathBuf,
        /// Check every entry's hash and its link to the one before.
        #[arg(long)]
        verify: bool,
        /// Machine-readable output (the entries, or the verdict).
        #[arg(long)]
        json: bool,
    },
    /// Support SSH: opened only from the local console, for a set time and network.
    #[command(subcommand)]
    SupportSsh(SupportSsh),
    /// The management API's users (port 4006): add, list, delete, unlock.
    #[command(subcommand)]
    User(cli_access::UserCommand),
    /// The management API's tokens for automation: add, list, delete.
    #[command(subcommand)]
    Token(cli_access::TokenCommand),
    /// Write the diagnostics bundle (the one served on port 4005) to a file.
    Diag {
        #[arg(long)]
        config: PathBuf,
        /// The .tar.zst to write; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum SupportSsh {
    /// Start an SSH server (keys only, no forwarding) reachable from one network
    /// for N minutes; everything closes by itself when the time runs out.
    Enable {
        #[arg(long)]
        config: PathBuf,
        /// How long the session stays open (at most appliance.support_ssh.minutes_max).
        #[arg(long)]
        minutes: Option<u64>,
        /// The network the engineer connects from, like 198.51.100.0/24 or one address.
        #[arg(long, value_name = "CIDR")]
        from: String,
        /// The engineer's OpenSSH public key (ed25519, ECDSA, or RSA of 3072+ bits).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[command(flatten)]
        test_hooks: ConsoleTestHooks,
    },
    /// Close the session now: port 22, the server and every SSH session.
    Disable {
        #[arg(long)]
        config: PathBuf,
    },
    /// Say whether a session is open, from where and until when.
    Status {
        #[arg(long)]
        config: PathBuf,
    },
    /// Internal: waits for the session's end and closes it.
    #[command(hide = true)]
    Warden {
        #[arg(long)]
        config: PathBuf,
    },
}

/// What the tests need of `support-ssh enable`: only in the test build
/// (`--features test-build`); the shipped binary does not know these flags.
#[derive(clap::Args, Default)]
struct ConsoleTestHooks {
    #[command(flatten)]
    console: cli_access::AssumeConsole,
    /// Tests only: the session lasts this many seconds instead of --minutes.
    #[cfg(feature = "test-build")]
    #[arg(long, hide = true)]
    seconds: Option<u64>,
}

impl ConsoleTestHooks {
    fn seconds(&self) -> Option<u64> {
        #[cfg(feature = "test-build")]
        return self.seconds;
        #[cfg(not(feature = "test-build"))]
        None
    }
}

fn main() {
    // Give freed memory back soon: the appliance's memory budget is small,
    // and batches come and go in large blocks.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) };
    // No transparent huge pages: a 2 MiB page that a buffer touches in
    // part counts in full and outlives the purge (16 VPGs x 8 exports
    // peaked at 151 MiB with them, 109 MiB without, writing the same).
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("tidemark: transparent huge pages stay on: {e}");
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if cli_remote::wanted(&args) {
        tidemark::logging::init_stderr();
        if let Err(e) = cli_remote::run(<cli_remote::RemoteCli as clap::Parser>::parse_from(args)) {
            eprintln!("tidemark: error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let cli = Cli::parse();
    init_logging(&cli.command);
    // The test build reads FAILPOINTS from the environment; the shipped
    // build has no failpoints at all.
    #[cfg(feature = "test-build")]
    let _failpoints = fail::FailScenario::setup();
    if let Err(e) = run(cli) {
        eprintln!("tidemark: error: {e:#}");
        std::process::exit(1);
    }
}

/// Commands that act on the appliance keep a persistent log (journald or
/// capped files) as well as stderr: who opened SSH, who pulled a bundle,
/// what the agents did. Read-only commands log to stderr only.
fn init_logging(command: &Command) {
    let config = match command {
        Command::Protected { config }
        | Command::Recovery { config }
        | Command::Restore { at: OnRecovery { config, .. }, .. }
        | Command::Seed { at: OnRecovery { config, .. }, .. }
        | Command::VerifyCheckpoint { at: OnRecovery { config, .. }, .. }
        | Command::Failover { at: OnRecovery { config, .. }, .. }
        | Command::Pin { at: OnRecovery { config, .. }, .. }
        | Command::Unpin { at: OnRecovery { config, .. }, .. }
        | Command::Move { at: OnProtected { config, .. }, .. }
        | Command::ClearAlert { at: OnProtected { config, .. } }
        | Command::Reverse { at: OnProtected { config, .. }, .. }
        | Command::MoveBack { at: OnProtected { config, .. }, .. }
        | Command::Verify { at: OnProtected { config, .. }, .. }
        | Command::Harden { config }
        | Command::Diag { config, .. } => Some(config),
        Command::SupportSsh(
            SupportSsh::Enable { config, .. } | SupportSsh::Disable { config } | SupportSsh::Warden { config },
        ) => Some(config),
        _ => None,
    };
    // A config that does not load is reported by the command itself.
    match config.and_then(|path| Config::load(path).ok()) {
        Some(cfg) => {
            if let Err(e) = tidemark::logging::init(&cfg.system().logging) {
                tidemark::logging::init_stderr();
                eprintln!("tidemark: warning: logging to stderr only: {e:#}");
            }
        }
        None => tidemark::logging::init_stderr(),
    }
}

/// The agent's reply, or its error as ours.
fn ok_reply(reply: tidemark::api::local::Reply) -> Result<tidemark::api::local::Reply> {
    if reply.ok {
        Ok(reply)
    } else {
        bail!("{}", reply.error.unwrap_or_else(|| "the agent refused without a reason".into()))
    }
}

/// Asks the running agent and returns what it says it did.
fn agent_says(data_dir: &std::path::Path, request: &tidemark::api::local::Request) -> Result<String> {
    Ok(ok_reply(tidemark::api::local::call(data_dir, request)?)?.message.unwrap_or_default())
}

/// Like `agent_says`, for long requests: `progress` is printed once the
/// agent is reached (not before, so it never precedes "is it running?").
fn agent_says_slowly(
    data_dir: &std::path::Path,
    request: &tidemark::api::local::Request,
    progress: &str,
) -> Result<String> {
    let connection = tidemark::api::local::connect(data_dir)?;
    eprintln!("{progress}");
    let (reply, _) = tidemark::api::local::ask(connection, request)?;
    Ok(ok_reply(reply)?.message.unwrap_or_default())
}

/// Descriptors an agent may need: every NBD connection the admission
/// lets in (`nbd::admission`), a kernel device's connections, the
/// replication, API and diagnostics connections, and the log's files.
const OPEN_FILES_WANTED: u64 = 8192;

/// Raises the limit on open descriptors from the usual soft 1024, at
/// which accepts would fail with EMFILE before the NBD admission's 1024
/// slots are taken: to OPEN_FILES_WANTED where the agent may (as root),
/// else to the hard limit.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let show = |limit: Option<u64>| limit.map_or("unlimited".to_string(), |n| n.to_string());
    let now = getrlimit(Resource::Nofile);
    // (None: unlimited.)
    if now.current.is_none_or(|soft| soft >= OPEN_FILES_WANTED) {
        return;
    }
    // A higher hard limit is kept; raising a lower one needs root.
    let hard = now.maximum.map(|hard| hard.max(OPEN_FILES_WANTED));
    if setrlimit(Resource::Nofile, Rlimit { current: Some(OPEN_FILES_WANTED), maximum: hard }).is_ok() {
        return;
    }
    match setrlimit(Resource::Nofile, Rlimit { current: now.maximum, maximum: now.maximum }) {
        Ok(()) => tracing::warn!(
            "open files limited to the hard limit, {hard}, not {OPEN_FILES_WANTED}",
            hard = show(now.maximum)
        ),
        Err(e) => tracing::warn!("open files stay limited to {}: {e}", show(now.current)),
    }
}

/// Runs one role's agent, with the appliance services beside it.
fn run_agent(path: &std::path::Path, role: &str) -> Result<()> {
    let cfg = Config::load(path)?;
    let other = if role == "protected" { "recovery" } else { "protected" };
    if !matches!((&cfg, role), (Config::Protected(_), "protected") | (Config::Recovery(_), "recovery")) {
        bail!("{}: role is \"{other}\"; use `tidemark {other}`", path.display());
    }
    raise_open_file_limit();
    if cfg.iscsi().is_some() {
        // The agent serves the block devices under the iSCSI LUNs: its
        // allocations must not wait on writeback to them (a deadlock).
        // Set before the runtime's threads exist, so they inherit it.
        rustix::process::configure_io_flusher_behavior(true)
            .context("marking the agent as an I/O flusher (PR_SET_IO_FLUSHER)")?;
    }
    runtime()?.block_on(async {
        tidemark::run::start_appliance_services(cfg.clone(), path.to_path_buf()).await?;
        match cfg {
            Config::Protected(p) => tidemark::run::protected::run(p).await,
            Config::Recovery(r) => tidemark::run::recovery::run(r).await,
        }
    })
}

fn support_ssh(command: SupportSsh) -> Result<()> {
    use tidemark::harden::support_ssh as ssh;
    match command {
        SupportSsh::Enable { config, minutes, from, key, test_hooks } => {
            let cfg = Config::load(&config)?;
            let seconds = test_hooks.seconds();
            if minutes.is_none() && seconds.is_none() {
                bail!("--minutes is required: how long the session stays open");
            }
            let opened = (|| -> Result<_> {
                let tty = match ssh::console_tty() {
                    Ok(tty) => tty,
                    Err(_) if test_hooks.console.assume() => "not a console (--assume-console, tests only)".to_string(),
                    Err(e) => return Err(e.into()),
                };
                let network = tidemark::config::parse_network(&from).context("--from")?;
                let key_text =
                    std::fs::read_to_string(&key).with_context(|| format!("--key: reading {}", key.display()))?;
                let config_path = std::fs::canonicalize(&config)?;
                let duration_ms = ssh::session_length_ms(&cfg, minutes.unwrap_or(0), seconds)?;
                Ok(ssh::enable(&cfg, ssh::EnableRequest { duration_ms, network, key_text, tty, config_path })?)
            })();
            let session = opened.inspect_err(|e| {
                // Refusals belong in the audit trail too.
                tracing::warn!("support SSH enable by {} refused: {e:#}", ssh::who());
            })?;
            println!(
                "support SSH open on port {} from {} until {}; key {}",
                session.port,
                session.network,
                tidemark::status::format_time_ms(session.until_ms),
                session.key_fingerprint
            );
        }
        SupportSsh::Disable { config } => {
            let cfg = Config::load(&config)?;
            let tty = ssh::console_tty().unwrap_or_else(|_| "not a console".into());
            match ssh::disable(&cfg, &ssh::who(), &tty)? {
                Some(s) => println!("support SSH closed (it was open from {})", s.network),
                None => println!("support SSH was not open"),
            }
        }
        SupportSsh::Status { config } => {
            let cfg = Config::load(&config)?;
            println!("{}", ssh::describe(&cfg.system().appliance.state_dir)?);
        }
        SupportSsh::Warden { config } => ssh::warden(&Config::load(&config)?)?,
    }
    Ok(())
}

/// Threads for blocking work (file and disk I/O done in place, fsyncs):
/// tokio's default of 512 let a burst of small NBD reads over a thousand
/// connections start 512 threads, each holding its own allocator pages
/// and stack: 350 MiB that stayed resident after the connections went
/// quiet. Past this many, blocking work waits for a thread.
const BLOCKING_THREADS_MAX: usize = 64;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS_MAX)
        .build()
        .context("starting the async runtime")
}

fn recovery_config(path: &std::path::Path) -> Result<tidemark::config::RecoveryConfig> {
    match Config::load(path)? {
        Config::Recovery(r) => Ok(r),
        Config::Protected(_) => {
            bail!("{}: this is a protected-side config; this command runs on the recovery appliance", path.display())
        }
    }
}

fn protected_config(path: &std::path::Path) -> Result<tidemark::config::ProtectedConfig> {
    match Config::load(path)? {
        Config::Protected(p) => Ok(p),
        Config::Recovery(_) => {
            bail!("{}: this is a recovery-side config; this command runs on the protected appliance", path.display())
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
        Command::Protected { config } => run_agent(&config, "protected")?,
        Command::Recovery { config } => run_agent(&config, "recovery")?,
        Command::Harden { config } => audited_cli(&config.clone(), "harden", serde_json::json!({}), || {
            let cfg = Config::load(&config)?;
            tidemark::harden::harden(&cfg).context("hardening failed; the appliance stays closed")?;
            println!("hardened: firewall, kernel settings and securetty applied (run `tidemark audit` to check)");
            Ok(())
        })?,
        Command::Audit { config, json } => audit(config, json)?,
        Command::AuditLog { config, verify, json } => audit_log(config, verify, json)?,
        Command::User(command) => cli_access::user(command)?,
        Command::Token(command) => cli_access::token(command)?,
        Command::SupportSsh(command) => {
            let audited = match &command {
                SupportSsh::Enable { config, minutes, from, key, .. } => Some((
                    config.clone(),
                    "support-ssh enable",
                    serde_json::json!({ "minutes": minutes, "from": from, "key": key.display().to_string() }),
                )),
                SupportSsh::Disable { config } => Some((config.clone(), "support-ssh disable", serde_json::json!({}))),
                SupportSsh::Status { .. } | SupportSsh::Warden { .. } => None,
            };
            match audited {
                Some((config, op, params)) => audited_cli(&config, op, params, || support_ssh(command))?,
                None => support_ssh(command)?,
            }
        }
        Command::Diag { config, out } => {
            let params = serde_json::json!({ "out": out.display().to_string() });
            audited_cli(&config.clone(), "diag", params, || diag(config, out))?
        }
        Command::Checkpoints { at: OnRecovery { config, vpg }, json } => list_checkpoints(config, vpg, json)?,
        Command::GroupCheckpoint { config, group, tag } => group_checkpoint(config, group, tag)?,
        Command::GroupCheckpoints { config, vpgs, json } => list_group_checkpoints(config, vpgs, json)?,
        Command::Checkpoint { at: OnProtected { config, vpg }, tag, wait } => {
            insert_checkpoint(config, vpg, tag, wait)?
        }
        Command::ClearAlert { at: OnProtected { config, vpg } } => clear_alert(config, vpg)?,
        Command::Restore { at: OnRecovery { config, vpg }, checkpoint, out } => {
            let params = serde_json::json!({ "vpg": vpg, "checkpoint": checkpoint, "out": out.display().to_string() });
            audited_cli(&config.clone(), "restore", params, || restore(config, vpg, checkpoint, out))?
        }
        Command::Seed { at: OnRecovery { config, vpg }, images } => {
            let named: Vec<String> = images.iter().map(|(v, f)| format!("{v}={}", f.display())).collect();
            let params = serde_json::json!({ "vpg": vpg, "images": named });
            audited_cli(&config.clone(), "seed", params, || seed(config, vpg, images))?
        }
        Command::Export { at: OnRecovery { config, vpg }, checkpoint } => export(config, vpg, checkpoint)?,
        Command::VerifyCheckpoint { at: OnRecovery { config, vpg }, checkpoint, timeout, json } => {
            verify_checkpoint(config, vpg, checkpoint, timeout, json)?
        }
        Command::Pin { at: OnRecovery { config, vpg }, checkpoint, reason } => {
            let params = serde_json::json!({ "vpg": vpg, "checkpoint": checkpoint, "reason": reason });
            audited_cli(&config.clone(), "pin", params, || pin(config, vpg, checkpoint, reason))?
        }
        Command::Unpin { at: OnRecovery { config, vpg }, checkpoint } => {
            let params = serde_json::json!({ "vpg": vpg, "checkpoint": checkpoint });
            audited_cli(&config.clone(), "unpin", params, || unpin(config, vpg, checkpoint))?
        }
        Command::Failover { at: OnRecovery { config, vpg }, checkpoint, files } => {
            let cfg = recovery_config(&config)?;
            let request = tidemark::api::local::Request::Failover { vpg, checkpoint, serve: !files };
            print!("{}", agent_says(&cfg.node.data_dir, &request)?);
        }
        Command::Reverse { at: OnProtected { config, vpg }, wait } => reverse(config, vpg, wait)?,
        Command::MoveBack { at: OnProtected { config, vpg }, wait, cancel } => move_back(config, vpg, wait, cancel)?,
        Command::Verify { at: OnProtected { config, vpg }, repair, json } => verify(config, vpg, repair, json)?,
        Command::Move { at: OnProtected { config, vpg }, wait, cancel } => move_vpg(config, vpg, wait, cancel)?,
        Command::TestFailover(TestFailover::Start { at: OnRecovery { config, vpg }, checkpoint }) => {
            test_failover_start(config, vpg, checkpoint)?
        }
        Command::TestFailover(TestFailover::Stop { at: OnRecovery { config, vpg } }) => {
            let cfg = recovery_config(&config)?;
            let request = tidemark::api::local::Request::TestFailoverStop { vpg };
            println!("{}", agent_says(&cfg.node.data_dir, &request)?);
        }
        Command::ConfigIso { properties, out, data_disk } => config_iso(properties, out, data_disk)?,
        Command::ApplianceConfig { ovf_env, out, data_dir } => appliance_config(ovf_env, out, data_dir)?,
        Command::OvfProperties => {
            for p in tidemark::appliance::ovf_config::PROPERTIES {
                println!("{}\t{}\t{}\t{}", p.key, p.what, p.qualifiers, p.password);
            }
        }
        Command::BenchCompress { file } => bench_compress(file)?,
        Command::BenchHash { file } => bench_hash(file)?,
        #[cfg(feature = "test-build")]
        Command::BenchJournal { journal_root, vpg, volume_size, bytes, checkpoints } => {
            let made = tidemark::journal::synth::write(&journal_root, &vpg, volume_size, bytes, checkpoints)?;
            println!(
                "{}: {} records in {} segments ({})",
                vpg,
                made.records,
                made.segments,
                tidemark::status::format_bytes(made.bytes)
            );
        }
        Command::Status { config, json } => status(config, json)?,
    }
    Ok(())
}

/// Runs a console command that works without the agent, with its request
/// and outcome in the audit trail. A config that cannot be read runs
/// nothing (the command would refuse it too).
fn audited_cli(
    config: &std::path::Path,
    op: &str,
    params: serde_json::Value,
    run: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let data_dir = Config::load(config)?.node().data_dir.clone();
    let actor = tidemark::audit_trail::Actor::console();
    tidemark::audit_trail::audited(&data_dir, &actor, op, params, run)
}

fn audit_log(config: PathBuf, verify: bool, json: bool) -> Result<()> {
    let cfg = Config::load(&config)?;
    let path = tidemark::audit_trail::trail_path(&cfg.node().data_dir);
    if verify {
        return print_audit_verdict(&tidemark::audit_trail::verify(&path)?, json);
    }
    let (entries, unreadable) = tidemark::audit_trail::read_all(&path)?;
    if unreadable > 0 {
        eprintln!("WARNING: {unreadable} lines of {} are not readable entries (run --verify)", path.display());
    }
    print_audit_entries(&entries, json, &format!("the audit trail at {} is empty", path.display()))
}

/// `audit-log --verify`'s verdict; exit status 1 for a broken chain.
fn print_audit_verdict(verdict: &tidemark::audit_trail::Verdict, json: bool) -> Result<()> {
    match json {
        true => println!("{}", serde_json::to_string_pretty(verdict)?),
        false => print!("{}", verdict.render()),
    }
    if verdict.broken.is_some() {
        std::process::exit(1);
    }
    Ok(())
}

fn print_audit_entries(entries: &[tidemark::audit_trail::Entry], json: bool, empty: &str) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("{empty}");
    }
    for e in entries {
        let of = e.of.map(|s| format!(" (of {s})")).unwrap_or_default();
        // The trail holds what requests said: shown, never interpreted
        // by the terminal.
        let shown = |s: &str| s.chars().flat_map(|c| c.escape_debug()).collect::<String>();
        println!(
            "{:>6} {} {} [{}] from {}: {} {} -> {}{of}",
            e.seq,
            tidemark::status::format_time_ms(e.time_ms),
            shown(&e.user),
            shown(&e.role),
            shown(&e.source),
            shown(&e.op),
            e.params,
            shown(&e.outcome)
        );
    }
    Ok(())
}

fn audit(config: PathBuf, json: bool) -> Result<()> {
    let cfg = Config::load(&config)?;
    let report = tidemark::harden::audit::run(&cfg);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}

fn diag(config: PathBuf, out: PathBuf) -> Result<()> {
    let cfg = Config::load(&config)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&out)
        .with_context(|| format!("creating {} (an existing file is never overwritten)", out.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let written = tidemark::api::bundle::write(&cfg, &config, &mut writer)
        .and_then(|()| Ok(writer.into_inner().map_err(|e| e.into_error())?.sync_all()?));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&out);
        return Err(e.context("writing the diagnostics bundle"));
    }
    tracing::info!("diagnostics bundle written to {} by {}", out.display(), tidemark::harden::support_ssh::who());
    println!("wrote {}", out.display());
    Ok(())
}

fn list_checkpoints(config: PathBuf, vpg: String, json: bool) -> Result<()> {
    let cfg = recovery_config(&config)?;
    let listing = tidemark::recovery::listing::list(&cfg.node.data_dir, &vpg)?;
    print_checkpoints(&listing.checkpoints, json)?;
    if !json {
        for p in &listing.pins {
            let reason = if p.reason.is_empty() { "no reason given" } else { &p.reason };
            eprintln!(
                "pinned: checkpoint {} since {} ({reason})",
                p.checkpoint,
                tidemark::status::format_time_ms(p.since_ms)
            );
        }
    }
    if let Some(c) = listing.last_clean.filter(|_| !json) {
        eprintln!(
            "WARNING: the encryption detector raised an alert; checkpoints after {c} are listed as suspect \
             (restore `--checkpoint last-clean`)"
        );
    }
    for warning in &listing.warnings {
        eprintln!("WARNING: {warning}");
    }
    if !json {
        let (summarized, scanned, bytes) = listing.read;
        eprintln!(
            "journal index: {summarized} sealed segments read from their summaries, {scanned} scanned ({})",
            tidemark::status::format_bytes(bytes)
        );
    }
    Ok(())
}

/// The checkpoint list: JSON, or the table (here or through --server).
fn print_checkpoints(checkpoints: &[tidemark::recovery::listing::Listed], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(checkpoints)?);
    } else {
        use std::io::Write as _;
        // A long history is 100,000s of lines: one buffered write per
        // line, padded by hand (`{:<22}` pads a character at a time).
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut line = String::new();
        let column = |line: &mut String, text: &str, width: usize| {
            line.push_str(text);
            line.push_str(&" ".repeat(width.saturating_sub(text.len()) + 1));
        };
        column(&mut line, "ID", 22);
        column(&mut line, "TIME (UTC)", 22);
        column(&mut line, "STATE", 12);
        column(&mut line, "CHECK", 12);
        line.push_str("TAG\n");
        for c in checkpoints {
            out.write_all(line.as_bytes())?;
            line.clear();
            column(&mut line, &c.info.id.to_string(), 22);
            column(&mut line, &tidemark::status::format_time_ms(c.info.time_ms), 22);
            column(&mut line, c.state(), 12);
            column(&mut line, c.check.as_deref().unwrap_or("-"), 12);
            line.push_str(&c.info.tag);
            line.push('\n');
        }
        out.write_all(line.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}

fn insert_checkpoint(config: PathBuf, vpg: String, tag: String, wait: std::time::Duration) -> Result<()> {
    let cfg = protected_config(&config)?;
    tidemark::api::local::validate_tag(&tag)?;
    let request = tidemark::api::local::Request::Checkpoint { vpg, tag: tag.clone(), wait_ms: wait.as_millis() as u64 };
    report_checkpoint(ok_reply(tidemark::api::local::call(&cfg.node.data_dir, &request)?)?, &tag, wait)
}

fn list_group_checkpoints(config: PathBuf, vpgs: Vec<String>, json: bool) -> Result<()> {
    let cfg = recovery_config(&config)?;
    if vpgs.len() < 2 {
        bail!("--vpg: name every member VPG (at least two)");
    }
    let common = tidemark::recovery::listing::common_tags(&cfg.node.data_dir, &vpgs)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&common)?);
        return Ok(());
    }
    let mut out = format!("{:<21}", "TIME");
    for v in &vpgs {
        out.push_str(&format!("{v:<18} "));
    }
    out.push_str("TAG\n");
    for c in &common {
        out.push_str(&format!("{:<21}", tidemark::status::format_time_ms(c.time_ms)));
        for id in &c.ids {
            out.push_str(&format!("{id:<18} "));
        }
        out.push_str(&c.tag);
        out.push('\n');
    }
    print!("{out}");
    if common.is_empty() {
        eprintln!("no tag names a restorable checkpoint in all of {vpgs:?}");
    }
    Ok(())
}

fn group_checkpoint(config: PathBuf, group: String, tag: Option<String>) -> Result<()> {
    let cfg = protected_config(&config)?;
    if let Some(tag) = &tag {
        tidemark::api::local::validate_tag(tag)?;
    }
    let request = tidemark::api::local::Request::GroupCheckpoint { group, tag };
    println!("{}", ok_reply(tidemark::api::local::call(&cfg.node.data_dir, &request)?)?.message.unwrap_or_default());
    Ok(())
}

/// What `checkpoint` prints of the agent's reply (here or through --server).
fn report_checkpoint(reply: tidemark::api::local::Reply, tag: &str, wait: std::time::Duration) -> Result<()> {
    let id = reply.id.context("the agent did not say which checkpoint it inserted")?;
    if let Some(note) = reply.message.as_ref().filter(|m| !m.is_empty()) {
        eprintln!("note: {note}");
    }
    if reply.durable {
        println!("checkpoint {id} {tag:?}: in the recovery journal");
    } else {
        println!("checkpoint {id} {tag:?}: in the protected log; the recovery side has not acknowledged it within {wait:?} (it will when the link allows)");
        std::process::exit(EXIT_NOT_YET_REPLICATED);
    }
    Ok(())
}

fn clear_alert(config: PathBuf, vpg: String) -> Result<()> {
    let cfg = protected_config(&config)?;
    let by = tidemark::harden::support_ssh::who();
    let request = tidemark::api::local::Request::ClearAlert { vpg, by };
    let reply = ok_reply(tidemark::api::local::call(&cfg.node.data_dir, &request)?)?;
    println!("{}", reply.message.unwrap_or_default());
    Ok(())
}

fn verify_checkpoint(
    config: PathBuf,
    vpg: String,
    checkpoint: String,
    timeout: std::time::Duration,
    json: bool,
) -> Result<()> {
    use tidemark::recovery::fs_check::{self, Verdict};
    let cfg = recovery_config(&config)?;
    let quiet = |_: &str| {};
    let say = |line: &str| println!("{line}");
    let progress: &dyn Fn(&str) = if json { &quiet } else { &say };
    let report = fs_check::verify(&cfg.node.data_dir.join("journal"), &vpg, &checkpoint, timeout, progress)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let tag = if report.tag.is_empty() { String::new() } else { format!(" {:?}", report.tag) };
        println!("checkpoint {}{tag}: {}", report.checkpoint, report.verdict.as_str());
    }
    match report.verdict {
        Verdict::Verified => Ok(()),
        Verdict::Failed => std::process::exit(EXIT_CHECK_FAILED),
        Verdict::Unverifiable => std::process::exit(EXIT_NOT_CHECKED),
    }
}

fn restore(config: PathBuf, vpg: String, checkpoint: String, out: PathBuf) -> Result<()> {
    let cfg = recovery_config(&config)?;
    let report =
        tidemark::recovery::restore::restore(&cfg.node.data_dir.join("journal"), &vpg, &checkpoint, &out, true)?;
    print!("{}", tidemark::recovery::restore::describe(&report));
    Ok(())
}

fn parse_seed_image(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((volume, file)) if !volume.is_empty() && !file.is_empty() => Ok((volume.to_string(), file.into())),
        _ => Err(format!("{text:?}: expected VOLUME=FILE, e.g. disk0=/mnt/shipped/disk0.raw")),
    }
}

fn seed(config: PathBuf, vpg: String, images: Vec<(String, PathBuf)>) -> Result<()> {
    let cfg = recovery_config(&config)?;
    if tidemark::api::local::connect(&cfg.node.data_dir).is_ok() {
        bail!("the recovery agent is running: stop it before seeding (the replica must not change under it)");
    }
    let seeded = tidemark::recovery::seed::seed(&cfg.node.data_dir.join("journal"), &vpg, &images, true)?;
    for s in &seeded {
        println!(
            "seeded volume {} of {vpg}: {} ({} of data)",
            s.volume,
            tidemark::status::format_bytes(s.size),
            tidemark::status::format_bytes(s.data_bytes)
        );
    }
    println!(
        "when the protected site connects, it compares extent hashes with this replica and sends only what differs"
    );
    Ok(())
}

fn pin(config: PathBuf, vpg: String, checkpoint: String, reason: String) -> Result<()> {
    let cfg = recovery_config(&config)?;
    let (chosen, pin) =
        tidemark::recovery::pinning::pin(&cfg.node.data_dir.join("journal"), &vpg, &checkpoint, &reason)?;
    tracing::info!(%vpg, "checkpoint {} pinned by {} ({})", pin.checkpoint, tidemark::harden::support_ssh::who(), pin.reason);
    println!(
        "checkpoint {} of {vpg} ({}) is pinned: it stays restorable, and the journal grows past its limit if it must, \
         until `tidemark unpin --vpg {vpg} --checkpoint {}`",
        pin.checkpoint,
        tidemark::status::format_time_ms(chosen.time_ms),
        pin.checkpoint
    );
    Ok(())
}

fn unpin(config: PathBuf, vpg: String, checkpoint: String) -> Result<()> {
    let cfg = recovery_config(&config)?;
    let gone = tidemark::recovery::pinning::unpin(&cfg.node.data_dir.join("journal"), &vpg, &checkpoint)?;
    tracing::info!(%vpg, "checkpoint {} unpinned by {}", gone.checkpoint, tidemark::harden::support_ssh::who());
    println!("checkpoint {} of {vpg} is no longer pinned; the history window applies to it again", gone.checkpoint);
    Ok(())
}

fn export(config: PathBuf, vpg: String, checkpoint: String) -> Result<()> {
    let cfg = recovery_config(&config)?;
    let request = tidemark::api::local::Request::Export { vpg, checkpoint };
    let (reply, mut held) = tidemark::api::local::call_and_hold(&cfg.node.data_dir, &request)?;
    report_export(&ok_reply(reply)?);
    // The exports last as long as this connection; the agent closes
    // it only when it stops.
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut held, &mut rest);
    bail!("the recovery agent stopped serving the exports");
}

/// What `export` prints once the volumes are served.
fn report_export(reply: &tidemark::api::local::Reply) {
    println!("serving checkpoint {} read-only:", reply.id.unwrap_or(0));
    for uri in &reply.exports {
        println!("  {uri}");
    }
    if let Some(problem) = reply.message.as_ref().filter(|m| !m.is_empty()) {
        eprintln!("{problem}");
    }
    eprintln!("press Ctrl-C to stop serving");
}

fn reverse(config: PathBuf, vpg: String, wait: std::time::Duration) -> Result<()> {
    let cfg = protected_config(&config)?;
    let request = tidemark::api::local::Request::Reverse { vpg, wait_ms: wait.as_millis() as u64 };
    let progress = "reverse protection: comparing extent hashes with the recovery site and receiving what differs";
    println!("{}", agent_says_slowly(&cfg.node.data_dir, &request, progress)?);
    Ok(())
}

fn move_vpg(config: PathBuf, vpg: String, wait: std::time::Duration, cancel: bool) -> Result<()> {
    let cfg = protected_config(&config)?;
    let request = tidemark::api::local::Request::Move { vpg, wait_ms: wait.as_millis() as u64, cancel };
    let progress = if cancel {
        format!("cancelling the move: asking the recovery side (up to {wait:?})")
    } else {
        format!("moving: writes are refused from now on; waiting for the recovery side (up to {wait:?})")
    };
    println!("{}", agent_says_slowly(&cfg.node.data_dir, &request, &progress)?);
    Ok(())
}

fn move_back(config: PathBuf, vpg: String, wait: std::time::Duration, cancel: bool) -> Result<()> {
    // The recovery site can only cancel (its old site may be gone).
    if let (true, Config::Recovery(cfg)) = (cancel, Config::load(&config)?) {
        let request = tidemark::api::local::Request::MoveBack { vpg, wait_ms: 0, cancel };
        println!("{}", agent_says(&cfg.node.data_dir, &request)?.trim_end());
        return Ok(());
    }
    let cfg = protected_config(&config)?;
    let request = tidemark::api::local::Request::MoveBack { vpg, wait_ms: wait.as_millis() as u64, cancel };
    let progress = if cancel {
        format!("cancelling the switch-back: asking the recovery site (up to {wait:?})")
    } else {
        format!("switching back: the recovery site refuses writes from now on (waiting up to {wait:?} per step)")
    };
    println!("{}", agent_says_slowly(&cfg.node.data_dir, &request, &progress)?);
    Ok(())
}

fn verify(config: PathBuf, vpg: String, repair: bool, json: bool) -> Result<()> {
    let cfg = protected_config(&config)?;
    let connection = tidemark::api::local::connect(&cfg.node.data_dir)?;
    if !json {
        eprintln!(
            "verify of {vpg}: taking a checkpoint and comparing every volume with the recovery site's image there"
        );
    }
    let request = tidemark::api::local::Request::Verify { vpg: vpg.clone(), repair };
    let (reply, _) = tidemark::api::local::ask(connection, &request)?;
    report_verify(&vpg, ok_reply(reply)?, json)
}

/// What `verify` prints of the agent's report; exit status 65 when
/// extents differ and were not repaired.
fn report_verify(vpg: &str, reply: tidemark::api::local::Reply, json: bool) -> Result<()> {
    let report = reply.verify.context("the agent's reply has no report")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{vpg}: {}", report.summary());
        for d in &report.differing {
            println!("  differs: volume {} offset {} ({} bytes)", d.volume, d.offset, d.length);
        }
        let unlisted = report.differing_extents - report.differing.len() as u64;
        if unlisted > 0 {
            println!("  ... and {unlisted} more (see the agent's log)");
        }
        match report.repaired_seq {
            Some(seq) => println!(
                "resent: the recovery site holds these extents from seq {seq} on; checkpoints before it still hold \
                 the damage"
            ),
            None if report.differing_extents > 0 => println!("run again with --repair to resend them"),
            None => {}
        }
    }
    if report.differing_extents > 0 && report.repaired_seq.is_none() {
        std::process::exit(EXIT_CHECK_FAILED);
    }
    Ok(())
}

fn test_failover_start(config: PathBuf, vpg: String, checkpoint: String) -> Result<()> {
    let cfg = recovery_config(&config)?;
    let request = tidemark::api::local::Request::TestFailoverStart { vpg: vpg.clone(), checkpoint };
    report_test_failover(&vpg, &ok_reply(tidemark::api::local::call(&cfg.node.data_dir, &request)?)?);
    Ok(())
}

/// What `test-failover start` prints once the exports are served.
fn report_test_failover(vpg: &str, reply: &tidemark::api::local::Reply) {
    println!("test failover of {vpg} at checkpoint {}; writable exports (discarded at stop):", reply.id.unwrap_or(0));
    for uri in &reply.exports {
        println!("  {uri}");
    }
    if let Some(problem) = reply.message.as_ref().filter(|m| !m.is_empty()) {
        eprintln!("{problem}");
    }
}

fn config_iso(properties: PathBuf, out: PathBuf, data_disk: Option<u64>) -> Result<()> {
    use tidemark::appliance::config_iso;
    let text = std::fs::read_to_string(&properties).with_context(|| format!("reading {}", properties.display()))?;
    let parsed = config_iso::parse_properties(&text).with_context(|| properties.display().to_string())?;
    let image = config_iso::build(&parsed, data_disk.unwrap_or(config_iso::OVA_DATA_DISK_BYTES))?;
    config_iso::write_new(&out, &image)?;
    println!(
            "{}: {} properties for {} checked and written ({} bytes, label {}); attach it to the appliance's CD-ROM before first boot",
            out.display(),
            parsed.len(),
            parsed.get("tidemark.hostname").map_or("tidemark", String::as_str),
            image.len(),
            config_iso::VOLUME_LABEL
        );
    Ok(())
}

fn appliance_config(ovf_env: PathBuf, out: PathBuf, data_dir: PathBuf) -> Result<()> {
    let xml = std::fs::read_to_string(&ovf_env).with_context(|| format!("reading {}", ovf_env.display()))?;
    let properties = tidemark::appliance::ovf_env::parse(&xml)?;
    let fs = rustix::fs::statvfs(&data_dir).with_context(|| format!("the data disk at {}", data_dir.display()))?;
    let files = tidemark::appliance::ovf_config::render(&properties, &data_dir, fs.f_blocks * fs.f_frsize)?;
    tidemark::appliance::ovf_config::write(&files, &out)?;
    if let Some((name, hash)) = &files.api_admin {
        // Made once: a later boot with the same properties keeps the user
        // (and its TOTP enrolment) as it is.
        use tidemark::access::{users, Role};
        if !users::load(&data_dir)?.users.contains_key(name) {
            let added = users::add_user(&data_dir, name, Role::Admin, hash.clone(), "the OVF properties")?;
            println!("tidemark: management API administrator {name} made from the OVF properties");
            if let Some(uri) = added.totp_uri {
                println!("tidemark: its TOTP enrolment, shown once (add it to an authenticator app now):\n{uri}");
            }
        }
    }
    println!(
        "configuration for {} written to {} from {} OVF properties",
        files.hostname.trim(),
        out.display(),
        properties.len()
    );
    Ok(())
}

fn bench_compress(file: PathBuf) -> Result<()> {
    let data = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let (seconds, wire) = tidemark::wire::batch::bench_compress(&data);
    println!(
        "{:.1} MB/s, {} -> {} bytes ({:.2}x)",
        data.len() as f64 / seconds / 1e6,
        data.len(),
        wire,
        data.len() as f64 / wire as f64
    );
    Ok(())
}

fn bench_hash(file: PathBuf) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
    let size = f.metadata()?.len();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let (mut at, mut extents) = (0u64, 0u64);
    while at < size {
        let len = (size - at).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..len], at)?;
        for piece in buf[..len].chunks(tidemark::extent_hash::EXTENT_BYTES as usize) {
            std::hint::black_box(tidemark::extent_hash::hash(piece));
            extents += 1;
        }
        at += len as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("{:.1} MB/s, {extents} extents of {size} bytes in {seconds:.3} s", size as f64 / seconds / 1e6);
    Ok(())
}

fn status(config: PathBuf, json: bool) -> Result<()> {
    let cfg = Config::load(&config)?;
    print_status(&tidemark::status::read(&cfg.node().data_dir)?, json)
}

fn print_status(status: &tidemark::status::AgentStatus, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", tidemark::status::render(status));
    }
    Ok(())
}
