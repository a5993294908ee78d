//! The coordinator's side: the groups of `[[coordination.group]]`, each
//! checkpoint taken in three steps across its members.
//!
//! 1. Ready: every remote member has a connection (made or reused), so no
//!    handshake happens while anyone's writes are held.
//! 2. Hold: every member is told to hold at once; the coordinator waits,
//!    at most `hold_max`, until every one says it holds.
//! 3. Mark: if all hold, each is told to append the checkpoint and let go;
//!    otherwise each is told to let go with nothing appended.
//!
//! The checkpoint is the group's only if every member marked it; the
//! result names each member's checkpoint id or why it has none.

use super::member::MARK_GRACE;
use super::message::{receive, send, FromMember, ToMember};
use super::CoordinationError;
use crate::capture::group_hold::HoldOutcome;
use crate::capture::vpg::VpgCapture;
use crate::config::{parse_fingerprint, CoordinationConfig, GroupConfig};
use crate::status::{GroupCheckpointSummary, GroupStatus};
use crate::wire::tls;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Mutex};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

type Result<T, E = CoordinationError> = std::result::Result<T, E>;

/// A connection idle longer than this is made again before a checkpoint
/// (members close theirs after `member::IDLE_TIMEOUT`).
const CONNECTION_REUSE_MAX: Duration = Duration::from_secs(240);
/// A member on the management network answers a connection within this.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Coordinator {
    groups: BTreeMap<String, Arc<Group>>,
    hold_max: Duration,
}

struct Group {
    name: String,
    interval: Option<Duration>,
    members: Vec<Arc<Member>>,
    /// One checkpoint of a group at a time; it holds the time of the last
    /// one's tag (ms since the epoch), so every tag is later than the one
    /// before, even within a millisecond or after the clock stepped back.
    running: Mutex<u64>,
    status: std::sync::Mutex<GroupStatus>,
}

enum Member {
    Local(Arc<VpgCapture>),
    Remote(Box<RemoteMember>),
}

struct RemoteMember {
    vpg: String,
    address: String,
    connector: TlsConnector,
    connection: Mutex<Option<(TlsStream<TcpStream>, Instant)>>,
}

/// One member's part in one checkpoint, as it ended.
#[derive(Debug)]
pub struct MemberResult {
    /// `vpg` or `vpg@host:port`.
    pub member: String,
    pub outcome: Result<HoldOutcome, String>,
}

#[derive(Debug)]
pub struct GroupCheckpoint {
    pub group: String,
    pub tag: String,
    pub members: Vec<MemberResult>,
    /// Every member appended the checkpoint.
    pub complete: bool,
    /// The longest any member's writes were held.
    pub held: Duration,
}

impl GroupCheckpoint {
    /// One line per member, for the CLI and the log.
    pub fn describe(&self) -> String {
        let mut text = if self.complete {
            format!(
                "checkpoint {:?} taken across group {} ({} members; writes held at most {:.2} ms)",
                self.tag,
                self.group,
                self.members.len(),
                self.held.as_secs_f64() * 1e3
            )
        } else {
            format!(
                "checkpoint {:?} of group {} was not taken on every member, so it is not the group's",
                self.tag, self.group
            )
        };
        for m in &self.members {
            let what = match &m.outcome {
                Ok(HoldOutcome::Marked { id, held }) => {
                    format!("checkpoint {id} (writes held {:.2} ms)", held.as_secs_f64() * 1e3)
                }
                Ok(HoldOutcome::Released { .. }) => "held, then let go with no checkpoint".into(),
                Ok(HoldOutcome::TooLate { .. }) => {
                    "let its writes go on before the coordinator's word: no checkpoint".into()
                }
                Err(why) => format!("no checkpoint: {why}"),
            };
            text.push_str(&format!("\n  {}: {what}", m.member));
        }
        text
    }
}

impl Member {
    fn label(&self) -> String {
        match self {
            Member::Local(c) => c.name.clone(),
            Member::Remote(r) => format!("{}@{}", r.vpg, r.address),
        }
    }
}

/// The coordinator's word to one member's task, and what it hears back.
struct Steps {
    ready: oneshot::Sender<Result<(), String>>,
    go: oneshot::Receiver<()>,
    held: oneshot::Sender<()>,
    mark: oneshot::Receiver<bool>,
}

struct StepHandles {
    ready: oneshot::Receiver<Result<(), String>>,
    go: oneshot::Sender<()>,
    held: oneshot::Receiver<()>,
    mark: oneshot::Sender<bool>,
    task: tokio::task::JoinHandle<Result<HoldOutcome>>,
}

impl Coordinator {
    /// The groups of `cfg`; `local`: this appliance's VPGs.
    pub fn new(
        cfg: &CoordinationConfig,
        identity: &tls::Identity,
        local: &BTreeMap<String, Arc<VpgCapture>>,
    ) -> Result<Coordinator> {
        let groups = cfg
            .groups
            .iter()
            .map(|g| Ok((g.name.clone(), Arc::new(Group::new(g, identity, local)?))))
            .collect::<Result<_>>()?;
        Ok(Coordinator { groups, hold_max: cfg.hold_max })
    }

    pub fn none() -> Coordinator {
        Coordinator { groups: BTreeMap::new(), hold_max: crate::config::HOLD_MAX_DEFAULT }
    }

    pub fn group_names(&self) -> Vec<String> {
        self.groups.keys().cloned().collect()
    }

    /// Starts each group's checkpoint timer (groups with an interval).
    pub fn start_timers(self: &Arc<Self>) {
        for group in self.groups.values() {
            let Some(every) = group.interval else { continue };
            let (me, name) = (self.clone(), group.name.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                let mut failing = false;
                loop {
                    tick.tick().await;
                    match me.checkpoint(&name, None).await {
                        Ok(done) if done.complete => {
                            if failing {
                                tracing::info!(group = %name, "coordinated checkpoints are taken again");
                            }
                            failing = false;
                        }
                        // Said once when they start failing, not every tick.
                        Ok(done) if !failing => {
                            failing = true;
                            tracing::warn!(group = %name, "{}", done.describe());
                        }
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(group = %name, "coordinated checkpoint failed: {e_chain}", e_chain = crate::error_chain::Chain(&e));
                        }
                        _ => {}
                    }
                }
            });
        }
    }

    pub fn status(&self) -> Vec<GroupStatus> {
        self.groups.values().map(|g| g.status.lock().expect("group status").clone()).collect()
    }

    /// Takes one checkpoint across `group`, tagged `tag` (by default
    /// `<group>@<time>`). Err when the group is unknown or the tag is not
    /// valid; otherwise what each member did.
    pub async fn checkpoint(&self, group: &str, tag: Option<String>) -> Result<GroupCheckpoint> {
        let g = self.groups.get(group).ok_or_else(|| {
            CoordinationError::Failed(format!(
                "no checkpoint group {group:?} is coordinated here (groups: {:?})",
                self.group_names()
            ))
        })?;
        if let Some(name) = &tag {
            // Refused before waiting for the group: the time part is short.
            crate::names::validate_group_tag(&group_tag(&g.name, Some(name), crate::record::now_ms())).map_err(
                |e| {
                    CoordinationError::from(e)
                        .at("the group checkpoint's tag (the name given, @, the group, @, the time)")
                },
            )?;
        }
        let mut last_ms = g.running.lock().await;
        *last_ms = crate::record::now_ms().max(*last_ms + 1);
        let tag = group_tag(&g.name, tag.as_deref(), *last_ms);
        crate::names::validate_group_tag(&tag)?;
        let result = g.take(tag, self.hold_max).await;
        g.record(&result);
        Ok(result)
    }
}

/// `<group>@<UTC time to the millisecond>`, after `<name>@` if a name is
/// given. Never a tag used before: restoring "by tag" takes each VPG's
/// newest checkpoint with it, and a reused tag could pair one attempt's
/// checkpoint on one member with another's (or with an ordinary
/// checkpoint) on the next.
fn group_tag(group: &str, name: Option<&str>, time_ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(time_ms);
    let at = format!("{group}@{}", humantime::format_rfc3339_millis(time));
    match name {
        Some(name) => format!("{name}@{at}"),
        None => at,
    }
}

impl Group {
    fn new(cfg: &GroupConfig, identity: &tls::Identity, local: &BTreeMap<String, Arc<VpgCapture>>) -> Result<Group> {
        let mut members = Vec::new();
        for m in &cfg.members {
            let member = match (&m.address, &m.fingerprint) {
                (Some(address), Some(fingerprint)) => {
                    let pinned = parse_fingerprint(fingerprint)?;
                    let config = tls::client_config(identity.duplicate(), pinned)?;
                    Member::Remote(Box::new(RemoteMember {
                        vpg: m.vpg.clone(),
                        address: address.clone(),
                        connector: TlsConnector::from(config),
                        connection: Mutex::new(None),
                    }))
                }
                _ => Member::Local(
                    local
                        .get(&m.vpg)
                        .ok_or_else(|| {
                            CoordinationError::Failed(format!("group {}: no VPG {:?} here", cfg.name, m.vpg))
                        })?
                        .clone(),
                ),
            };
            members.push(Arc::new(member));
        }
        let status = GroupStatus {
            name: cfg.name.clone(),
            members: members.iter().map(|m| m.label()).collect(),
            interval_seconds: cfg.interval.map(|d| d.as_secs_f64()),
            ..GroupStatus::default()
        };
        Ok(Group {
            name: cfg.name.clone(),
            interval: cfg.interval,
            members,
            running: Mutex::new(0),
            status: std::sync::Mutex::new(status),
        })
    }

    async fn take(&self, tag: String, hold_max: Duration) -> GroupCheckpoint {
        let handles: Vec<StepHandles> = self.members.iter().map(|m| spawn_member(m.clone(), &tag, hold_max)).collect();
        let (mut go, mut held, mut mark, mut tasks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut all_ready = true;
        for h in handles {
            // Each task bounds its own connect (and fails its step if it cannot).
            all_ready &= matches!(h.ready.await, Ok(Ok(())));
            go.push(h.go);
            held.push(h.held);
            mark.push(h.mark);
            tasks.push(h.task);
        }
        // Which members said they held before the deadline, and the one
        // that did not (the others are let go then).
        let mut in_time = vec![false; self.members.len()];
        let mut late = Vec::new();
        if all_ready {
            // Remote members first, this appliance's once they all hold:
            // the order of the holds does not matter (only that all hold
            // before any marks), and a local hold then lasts microseconds
            // instead of a round trip.
            let deadline = tokio::time::Instant::now() + hold_max;
            let mut steps: Vec<_> = go.into_iter().zip(held).enumerate().map(|(i, step)| (i, Some(step))).collect();
            let is_local = |i: usize| matches!(*self.members[i], Member::Local(_));
            for local in [false, true] {
                let mut waiting = Vec::new();
                for (i, step) in steps.iter_mut().filter(|(i, _)| is_local(*i) == local) {
                    let (go, held) = step.take().expect("each member is told once");
                    let _ = go.send(());
                    waiting.push((*i, held));
                }
                let (held, failed) = all_hold(waiting, deadline).await;
                for i in held {
                    in_time[i] = true;
                }
                if !failed.is_empty() {
                    late = failed;
                    break;
                }
            }
            // Members not yet told to hold are let go by dropping their steps.
            drop(steps);
            let all_held = in_time.iter().all(|h| *h);
            for m in mark {
                let _ = m.send(all_held);
            }
        } else {
            // The go senders are dropped: no member holds.
            drop(go);
        }
        let mut members = Vec::new();
        for (i, (task, member)) in tasks.into_iter().zip(&self.members).enumerate() {
            let outcome = match task.await {
                // Let go because this member was late, not another.
                Ok(Ok(HoldOutcome::Released { .. })) if late.contains(&i) => {
                    Err(format!("did not say it held within hold_max ({hold_max:?})"))
                }
                Ok(Ok(outcome)) => Ok(outcome),
                Ok(Err(e)) => Err(crate::error_chain::Chain(&e).to_string()),
                Err(e) => Err(format!("its task ended: {e}")),
            };
            members.push(MemberResult { member: member.label(), outcome });
        }
        let complete = members.iter().all(|m| matches!(m.outcome, Ok(HoldOutcome::Marked { .. })));
        let held = members
            .iter()
            .filter_map(|m| match m.outcome {
                Ok(
                    HoldOutcome::Marked { held, .. } | HoldOutcome::Released { held } | HoldOutcome::TooLate { held },
                ) => Some(held),
                Err(_) => None,
            })
            .max()
            .unwrap_or_default();
        GroupCheckpoint { group: self.name.clone(), tag, members, complete, held }
    }

    fn record(&self, result: &GroupCheckpoint) {
        let mut status = self.status.lock().expect("group status");
        let held_us = result.held.as_micros() as u64;
        status.hold_max_us = status.hold_max_us.max(held_us);
        if result.complete {
            status.complete += 1;
            status.last_error = None;
            status.last_complete =
                Some(GroupCheckpointSummary { tag: result.tag.clone(), time_ms: crate::record::now_ms(), held_us });
        } else {
            status.failed += 1;
            let why: Vec<String> = result
                .members
                .iter()
                .filter_map(|m| match &m.outcome {
                    Err(e) => Some(format!("{}: {e}", m.member)),
                    Ok(HoldOutcome::TooLate { .. }) => Some(format!("{}: held past hold_max", m.member)),
                    _ => None,
                })
                .collect();
            status.last_error =
                Some(if why.is_empty() { "a member did not hold in time".into() } else { why.join("; ") });
        }
    }
}

/// Waits until every one of `waiting` (member index, its "held") says it
/// holds, or one cannot, or the deadline: the members that held, and those
/// that did not (empty when all did). Stops at the first that cannot, so
/// one refusal does not keep the others held to the deadline.
async fn all_hold(
    waiting: Vec<(usize, oneshot::Receiver<()>)>,
    deadline: tokio::time::Instant,
) -> (Vec<usize>, Vec<usize>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(waiting.len().max(1));
    let mut pending: Vec<usize> = waiting.iter().map(|(i, _)| *i).collect();
    for (i, held) in waiting {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send((i, held.await.is_ok())).await;
        });
    }
    drop(tx);
    let mut held = Vec::new();
    while !pending.is_empty() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((i, true))) => {
                pending.retain(|p| *p != i);
                held.push(i);
            }
            Ok(Some((i, false))) => return (held, vec![i]),
            // The deadline: every member still silent is late.
            Ok(None) | Err(_) => return (held, pending),
        }
    }
    (held, Vec::new())
}

fn spawn_member(member: Arc<Member>, tag: &str, hold_max: Duration) -> StepHandles {
    let (ready_tx, ready) = oneshot::channel();
    let (go, go_rx) = oneshot::channel();
    let (held_tx, held) = oneshot::channel();
    let (mark, mark_rx) = oneshot::channel();
    let steps = Steps { ready: ready_tx, go: go_rx, held: held_tx, mark: mark_rx };
    let tag = tag.to_string();
    let task = tokio::spawn(async move {
        match &*member {
            Member::Local(capture) => {
                let _ = steps.ready.send(Ok(()));
                if steps.go.await.is_err() {
                    return Err(CoordinationError::Failed(
                        "not held: another member was not ready or did not hold".to_string(),
                    ));
                }
                Ok(capture.hold_for_group(&tag, hold_max, steps.held, steps.mark).await?)
            }
            Member::Remote(remote) => remote.take_part(&tag, hold_max, steps).await,
        }
    });
    StepHandles { ready, go, held, mark, task }
}

impl RemoteMember {
    async fn take_part(&self, tag: &str, hold_max: Duration, steps: Steps) -> Result<HoldOutcome> {
        let mut slot = self.connection.lock().await;
        let reusable = slot.take().filter(|(stream, used)| used.elapsed() < CONNECTION_REUSE_MAX && quiet(stream));
        let mut stream = match reusable {
            Some((stream, _)) => stream,
            None => match self.dial().await {
                Ok(stream) => stream,
                Err(e) => {
                    let why = crate::error_chain::Chain(&e).to_string();
                    let _ = steps.ready.send(Err(why.clone()));
                    return Err(CoordinationError::Failed(why.to_string()));
                }
            },
        };
        let _ = steps.ready.send(Ok(()));
        if steps.go.await.is_err() {
            *slot = Some((stream, Instant::now()));
            return Err(CoordinationError::Failed("not held: another member was not ready".to_string()));
        }
        let word = hold_max + MARK_GRACE;
        let hold = ToMember::Hold { vpg: self.vpg.clone(), tag: tag.to_string() };
        match ask(&mut stream, &hold, word, "hold").await? {
            FromMember::Held => {
                let _ = steps.held.send(());
            }
            FromMember::Refused { reason } => {
                *slot = Some((stream, Instant::now()));
                return Err(CoordinationError::Failed(format!("refused: {reason}")));
            }
            other => return Err(CoordinationError::Failed(format!("answered {other:?} to a hold"))),
        }
        let mark = steps.mark.await.unwrap_or(false);
        let outcome = match ask(&mut stream, &ToMember::Mark { mark }, word, "mark").await? {
            FromMember::Marked { id, held_us } => HoldOutcome::Marked { id, held: us(held_us) },
            FromMember::Released { held_us } => HoldOutcome::Released { held: us(held_us) },
            FromMember::TooLate { held_us } => HoldOutcome::TooLate { held: us(held_us) },
            FromMember::Refused { reason } => {
                *slot = Some((stream, Instant::now()));
                return Err(CoordinationError::Failed(reason));
            }
            other => return Err(CoordinationError::Failed(format!("answered {other:?} to a mark"))),
        };
        *slot = Some((stream, Instant::now()));
        Ok(outcome)
    }

    async fn dial(&self) -> Result<TlsStream<TcpStream>> {
        let (host, port) = crate::config::split_address(&self.address)?;
        let dial = crate::transfer::sender::dial(&self.connector, host, port);
        let dialed = tokio::time::timeout(DIAL_TIMEOUT, dial)
            .await
            .map_err(|_| CoordinationError::Failed(format!("no answer within {DIAL_TIMEOUT:?}")))?;
        dialed.map_err(|e| CoordinationError::Failed(crate::error_chain::Chain(&e).to_string()))
    }
}

/// Sends the `what` (hold or mark) and reads the member's answer, each
/// within `word`. Err: the connection is lost.
async fn ask(stream: &mut TlsStream<TcpStream>, message: &ToMember, word: Duration, what: &str) -> Result<FromMember> {
    tokio::time::timeout(word, send(stream, message))
        .await
        .map_err(|_| CoordinationError::Failed(format!("the member took no {what} within {word:?}")))?
        .map_err(|e| {
            e.at({
                format!("sending the {what} (the connection to the member is lost; the next checkpoint connects again)")
            })
        })?;
    tokio::time::timeout(word, receive(stream))
        .await
        .map_err(|_| CoordinationError::Failed(format!("did not answer the {what} within {word:?}")))?
        .map_err(|e| e.at(format!("waiting for the answer to the {what}")))
}

/// A kept connection the member has said nothing on since: a member never
/// speaks unasked, so readable means it closed (restarted, timed out) or
/// broke the protocol, and the connection is made again before the hold.
fn quiet(stream: &TlsStream<TcpStream>) -> bool {
    use std::future::Future;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let readable = std::pin::pin!(stream.get_ref().0.ready(tokio::io::Interest::READABLE));
    readable.poll(&mut cx).is_pending()
}

fn us(micros: u64) -> Duration {
    Duration::from_micros(micros)
}
