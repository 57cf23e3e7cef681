//! A consumer-group member on the embedded log.
//!
//! Two halves share one [`State`]:
//! - the member task (one per consumer) heartbeats, claims its fair share of partitions
//!   through leases, and hands surplus partitions back after the revoke handshake; it is
//!   the only code that changes which partitions the consumer owns;
//! - [`EmbeddedConsumer::next_event`] serves queued `Revoked` events first, then records
//!   from per-partition read-ahead buffers, refilled from SQLite when they run dry.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::Published;
use super::store::{self, Membership, Store};
use crate::{BrokerError, Consumer, ConsumerEvent, Message, TopicPartition};

/// Records read ahead per partition and refill; bounds memory and keeps rounds short so
/// partitions interleave.
const FETCH_BATCH: usize = 64;

/// Longest wait between looks for other processes' records while a consumer idles.
const MAX_IDLE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Timing of one member, from [`super::EmbeddedOptions`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Timing {
    pub heartbeat_interval: Duration,
    pub poll_interval: Duration,
}

pub struct EmbeddedConsumer {
    shared: Arc<Shared>,
    close_requested: watch::Sender<bool>,
    member_task: JoinHandle<()>,
}

struct Shared {
    store: Arc<Store>,
    membership: Arc<Membership>,
    timing: Timing,
    state: Mutex<State>,
    /// Ownership changed, a `Revoked` event was queued, or the consumer closed.
    changed: Notify,
    /// A producer of the same broker appended a record (other processes are polled).
    published: Arc<Published>,
    /// Set once the member has left the group (or its task ended).
    closed: watch::Sender<bool>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct State {
    owned: BTreeMap<TopicPartition, Owned>,
    events: VecDeque<ConsumerEvent>,
    /// The partition served last, so the next message comes from the one after it.
    last_served: Option<TopicPartition>,
    next_epoch: u64,
    closed: bool,
    /// Whether the next refill must read every partition from the file: after an
    /// ownership change (an acquired partition may hold records from before this
    /// process) and on each poll (other processes may have appended). Otherwise only
    /// what this process published is new, and it is in memory.
    file_read_due: bool,
}

/// A partition this consumer may deliver from.
struct Owned {
    /// Distinguishes ownership periods, so a read started before a revoke (and a
    /// re-acquire) cannot fill the buffer of the new period.
    epoch: u64,
    /// Next offset to read from the log: past everything buffered or delivered in this
    /// ownership period, so nothing is re-delivered before the trigger commits.
    next_fetch: i64,
    buffer: VecDeque<Message>,
}

/// One partition's share of a refill.
struct Fetch {
    tp: TopicPartition,
    epoch: u64,
    from: i64,
}

impl State {
    fn pop_ready(&mut self) -> Option<ConsumerEvent> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        self.next_message().map(ConsumerEvent::Message)
    }

    /// Round-robin over partitions with buffered records, starting after the one served
    /// last, so a partition with a backlog cannot starve the others.
    fn next_message(&mut self) -> Option<Message> {
        let tp = match &self.last_served {
            Some(last) => self
                .owned
                .range::<TopicPartition, _>((Excluded(last), Unbounded))
                .chain(self.owned.range::<TopicPartition, _>((Unbounded, Included(last))))
                .find(|(_, owned)| !owned.buffer.is_empty())
                .map(|(tp, _)| tp.clone()),
            None => self
                .owned
                .iter()
                .find(|(_, owned)| !owned.buffer.is_empty())
                .map(|(tp, _)| tp.clone()),
        }?;
        let message = self.owned.get_mut(&tp)?.buffer.pop_front();
        self.last_served = Some(tp);
        message
    }

    /// Reads for every owned partition with an empty buffer; with `grown`, only for
    /// those this process appended to past what was read.
    fn fetch_plan(&self, grown: Option<&Published>) -> Vec<Fetch> {
        self.owned
            .iter()
            .filter(|(_, owned)| owned.buffer.is_empty())
            .filter(|(tp, owned)| grown.is_none_or(|p| p.end(tp).is_some_and(|end| end > owned.next_fetch)))
            .map(|(tp, owned)| Fetch {
                tp: tp.clone(),
                epoch: owned.epoch,
                from: owned.next_fetch,
            })
            .collect()
    }

    /// Buffers fetched records that are still wanted: the partition is still owned in the
    /// same period and the records are past what is already buffered (two concurrent
    /// `next_event` calls may read the same range). Returns whether anything was added.
    fn accept(&mut self, fetched: Vec<(Fetch, Vec<Message>)>) -> bool {
        let mut added = false;
        for (fetch, messages) in fetched {
            let Some(owned) = self.owned.get_mut(&fetch.tp).filter(|o| o.epoch == fetch.epoch) else {
                continue;
            };
            for message in messages {
                if message.offset >= owned.next_fetch {
                    owned.next_fetch = message.offset + 1;
                    owned.buffer.push_back(message);
                    added = true;
                }
            }
        }
        added
    }

    fn acquire(&mut self, tp: TopicPartition, start: i64) {
        self.next_epoch += 1;
        let owned = Owned {
            epoch: self.next_epoch,
            next_fetch: start,
            buffer: VecDeque::new(),
        };
        self.owned.insert(tp, owned);
        self.file_read_due = true;
    }

    /// Stops delivering `partitions` (dropping what was read ahead) and queues the
    /// `Revoked` event the trigger answers through `done`.
    fn revoke(&mut self, partitions: &BTreeSet<TopicPartition>, done: oneshot::Sender<()>) {
        for tp in partitions {
            self.owned.remove(tp);
        }
        self.events.push_back(ConsumerEvent::Revoked {
            partitions: partitions.iter().cloned().collect(),
            done,
        });
    }
}

impl EmbeddedConsumer {
    /// Registers `membership` in its group (creating missing topics) and starts the
    /// member task.
    pub(super) async fn join(
        store: Arc<Store>,
        membership: Membership,
        default_partitions: i32,
        timing: Timing,
        published: Arc<Published>,
    ) -> Result<Arc<Self>, BrokerError> {
        let membership = Arc::new(membership);
        let m = Arc::clone(&membership);
        store
            .write(move |conn| store::join(conn, &m, default_partitions))
            .await?;

        let shared = Arc::new(Shared {
            store,
            membership,
            timing,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            published,
            closed: watch::Sender::new(false),
        });
        let (close_requested, close_rx) = watch::channel(false);
        let member_task = tokio::spawn(run_member(Arc::clone(&shared), close_rx));
        Ok(Arc::new(EmbeddedConsumer {
            shared,
            close_requested,
            member_task,
        }))
    }

    /// This consumer's id in its group.
    pub fn member_id(&self) -> &str {
        &self.shared.membership.member_id
    }

    /// Stops heartbeating without leaving the group, as if the process had died.
    #[cfg(test)]
    pub(super) fn simulate_crash(&self) {
        self.member_task.abort();
    }

    /// Reads the next batch of every owned partition whose buffer is empty.
    async fn refill(&self, every_partition: bool) -> Result<bool, BrokerError> {
        let grown = (!every_partition).then_some(&*self.shared.published);
        let plan = {
            let mut state = self.shared.state();
            // Cleared as the plan is taken: an acquire after this sets it again.
            if every_partition {
                state.file_read_due = false;
            }
            state.fetch_plan(grown)
        };
        if plan.is_empty() {
            return Ok(false);
        }
        // What this process just published comes from memory; the rest from the file.
        let mut fetched = Vec::with_capacity(plan.len());
        let mut from_file = Vec::new();
        for fetch in plan {
            match self.shared.published.recent(&fetch.tp, fetch.from, FETCH_BATCH) {
                Some(messages) => fetched.push((fetch, messages)),
                None => from_file.push(fetch),
            }
        }
        if !from_file.is_empty() {
            let read = self.shared.store.with_conn(move |conn| {
                from_file
                    .into_iter()
                    .map(|fetch| {
                        let messages = store::read(conn, &fetch.tp, fetch.from, FETCH_BATCH)?;
                        Ok((fetch, messages))
                    })
                    .collect::<store::StoreResult<Vec<_>>>()
            });
            match read {
                Ok(read) => fetched.extend(read),
                Err(e) => {
                    if every_partition {
                        self.shared.state().file_read_due = true;
                    }
                    return Err(e);
                }
            }
        }
        Ok(self.shared.state().accept(fetched))
    }
}

impl Drop for EmbeddedConsumer {
    /// Dropping without `close` stops heartbeats: the leases expire after the session
    /// timeout and the partitions move on, exactly as when the process crashes.
    fn drop(&mut self) {
        self.member_task.abort();
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    /// Cancel-safe: state changes only in synchronous sections; a refill whose future is
    /// dropped leaves the positions untouched, so its records are read again next time.
    async fn next_event(&self) -> Result<ConsumerEvent, BrokerError> {
        // This process's producers wake the consumer at once; the poll is only for
        // records appended by other processes, so it backs off while nothing comes.
        let mut poll = self.shared.timing.poll_interval;
        // Read every partition from the file after an ownership change and on each
        // poll; otherwise (and after a local publish) only the partitions that grew,
        // from memory: a consumer called again and again under load does not read
        // the file for partitions with nothing new.
        let mut every_partition = self.shared.state().file_read_due;
        loop {
            // Register for wake-ups before looking, so a change between the look and the
            // wait is not missed.
            let mut changed = pin!(self.shared.changed.notified());
            let mut published = pin!(self.shared.published.notified());
            changed.as_mut().enable();
            published.as_mut().enable();

            {
                let mut state = self.shared.state();
                if let Some(event) = state.pop_ready() {
                    return Ok(event);
                }
                if state.closed {
                    return Err(BrokerError::Closed);
                }
            }
            if self.refill(every_partition).await? {
                continue;
            }
            every_partition = tokio::select! {
                () = changed => true,
                () = published => false,
                () = tokio::time::sleep(poll) => {
                    poll = (poll * 2).min(MAX_IDLE_POLL_INTERVAL.max(self.shared.timing.poll_interval));
                    true
                }
            };
        }
    }

    async fn commit(&self, partition: &TopicPartition, next_offset: i64) -> Result<(), BrokerError> {
        if next_offset < 0 {
            return Err(BrokerError::Rejected(format!(
                "cannot commit negative offset {next_offset} for {partition}"
            )));
        }
        let membership = Arc::clone(&self.shared.membership);
        let tp = partition.clone();
        self.shared
            .store
            .write(move |conn| store::commit(conn, &membership, &tp, next_offset))
            .await
    }

    /// Hands every owned partition back through the `Revoked` handshake, then leaves the
    /// group. The trigger must keep calling `next_event` until it returns
    /// [`BrokerError::Closed`], or the handshake cannot complete.
    /// Exact: read from the log (a local read, microseconds).
    fn high_watermark(&self, partition: &TopicPartition) -> Option<i64> {
        self.shared
            .store
            .with_conn(|conn| {
                conn.query_row(
                    "SELECT COALESCE(MAX(record_offset) + 1, 0) FROM records WHERE topic = ?1 AND partition_id = ?2",
                    rusqlite::params![partition.topic, partition.partition],
                    |row| row.get::<_, i64>(0),
                )
                .map_err(Into::into)
            })
            .ok()
    }

    async fn close(&self) {
        self.close_requested.send_replace(true);
        let mut closed = self.shared.closed.subscribe();
        // An error means the member task is gone, which also means closed.
        let _ = closed.wait_for(|closed| *closed).await;
    }
}

/// Partitions queued as `Revoked`, waiting for the trigger's `done`.
struct Release {
    partitions: BTreeSet<TopicPartition>,
    done: oneshot::Receiver<()>,
}

/// The member task's own state.
struct Member {
    shared: Arc<Shared>,
    /// At most one handshake at a time; further surplus waits for the next heartbeat.
    pending: Option<Release>,
    /// Handshake finished but the lease delete failed (SQLite busy); retried each beat.
    handed_back: BTreeSet<TopicPartition>,
    closing: bool,
}

/// Marks the consumer closed whenever the member task ends, even by panic or abort, so
/// `close` and `next_event` never wait for a task that is gone.
struct MarkClosedOnExit(Arc<Shared>);

impl Drop for MarkClosedOnExit {
    fn drop(&mut self) {
        self.0.state().closed = true;
        self.0.changed.notify_waiters();
        self.0.closed.send_replace(true);
    }
}

async fn run_member(shared: Arc<Shared>, mut close_requested: watch::Receiver<bool>) {
    let _mark_closed = MarkClosedOnExit(Arc::clone(&shared));
    let mut ticker = tokio::time::interval(shared.timing.heartbeat_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut member = Member {
        shared,
        pending: None,
        handed_back: BTreeSet::new(),
        closing: false,
    };
    loop {
        tokio::select! {
            () = handshake(&mut member.pending) => {
                member.finish_release().await;
                if member.closing && member.continue_closing().await {
                    return;
                }
            }
            // An error means the consumer is gone: leave as on close.
            _ = close_requested.changed(), if !member.closing => {
                member.closing = true;
                if member.continue_closing().await {
                    return;
                }
            }
            _ = ticker.tick() => member.heartbeat().await,
        }
    }
}

/// Completes when the trigger sends or drops `done` of the pending release.
async fn handshake(pending: &mut Option<Release>) {
    match pending {
        // Sent and dropped both mean the trigger is finished with the partitions.
        Some(release) => {
            let _ = (&mut release.done).await;
        }
        None => std::future::pending().await,
    }
}

impl Member {
    fn known(&self, state: &State) -> BTreeSet<TopicPartition> {
        let mut known: BTreeSet<_> = state.owned.keys().cloned().collect();
        known.extend(self.pending.iter().flat_map(|r| r.partitions.iter().cloned()));
        known.extend(self.handed_back.iter().cloned());
        known
    }

    async fn heartbeat(&mut self) {
        let known = self.known(&self.shared.state());
        let membership = Arc::clone(&self.shared.membership);
        let balance = !self.closing;
        let beat = self
            .shared
            .store
            .write(move |conn| store::heartbeat(conn, &membership, balance, &known))
            .await;
        let beat = match beat {
            Ok(beat) => beat,
            Err(e) => {
                // The leases run until the session timeout; the next beat may get through.
                tracing::warn!(group = %self.shared.membership.group, member = %self.shared.membership.member_id,
                    error = %e, "embedded log heartbeat failed");
                return;
            }
        };

        self.apply(&beat);
        self.handed_back.retain(|tp| beat.held.contains(tp));
        self.delete_handed_back().await;

        if !self.closing && self.pending.is_none() {
            let surplus: BTreeSet<_> = {
                let state = self.shared.state();
                beat.surplus
                    .iter()
                    .filter(|tp| state.owned.contains_key(*tp))
                    .cloned()
                    .collect()
            };
            if !surplus.is_empty() {
                self.start_release(surplus);
            }
        }
    }

    /// Takes on newly acquired partitions and drops the ones whose lease another member
    /// took (this member missed heartbeats for a whole session).
    fn apply(&self, beat: &store::Heartbeat) {
        let m = &self.shared.membership;
        let mut state = self.shared.state();
        let lost: BTreeSet<_> = state
            .owned
            .keys()
            .filter(|tp| !beat.held.contains(*tp))
            .cloned()
            .collect();
        if !lost.is_empty() {
            tracing::warn!(group = %m.group, member = %m.member_id, partitions = ?lost,
                "embedded log partitions lost: their leases expired and another member took them");
            // Nothing to wait for: the partitions are already gone. The trigger still
            // hears about it so it drops in-flight work (its commits would be refused).
            let (done, _) = oneshot::channel();
            state.revoke(&lost, done);
        }
        for (tp, start) in &beat.acquired {
            tracing::info!(group = %m.group, member = %m.member_id, partition = %tp, offset = start,
                "embedded log partition assigned");
            state.acquire(tp.clone(), *start);
        }
        drop(state);
        if !lost.is_empty() || !beat.acquired.is_empty() {
            self.shared.changed.notify_waiters();
        }
    }

    fn start_release(&mut self, partitions: BTreeSet<TopicPartition>) {
        let m = &self.shared.membership;
        tracing::info!(group = %m.group, member = %m.member_id, partitions = ?partitions,
            "embedded log partitions revoked");
        let (done, done_rx) = oneshot::channel();
        self.shared.state().revoke(&partitions, done);
        self.shared.changed.notify_waiters();
        self.pending = Some(Release {
            partitions,
            done: done_rx,
        });
    }

    /// The trigger finished with the pending partitions: give up their leases.
    async fn finish_release(&mut self) {
        if let Some(release) = self.pending.take() {
            self.handed_back.extend(release.partitions);
        }
        self.delete_handed_back().await;
    }

    async fn delete_handed_back(&mut self) {
        if self.handed_back.is_empty() {
            return;
        }
        let membership = Arc::clone(&self.shared.membership);
        let partitions = self.handed_back.clone();
        match self
            .shared
            .store
            .write(move |conn| store::release(conn, &membership, &partitions))
            .await
        {
            Ok(()) => self.handed_back.clear(),
            Err(e) => tracing::warn!(group = %self.shared.membership.group, error = %e,
                "embedded log could not release partitions; retrying on the next heartbeat"),
        }
    }

    /// Advances a close: first the handshake for everything still owned, then leaving the
    /// group. Returns true once the member has left.
    async fn continue_closing(&mut self) -> bool {
        if self.pending.is_some() {
            return false;
        }
        let owned: BTreeSet<_> = self.shared.state().owned.keys().cloned().collect();
        if !owned.is_empty() {
            self.start_release(owned);
            return false;
        }
        let membership = Arc::clone(&self.shared.membership);
        if let Err(e) = self
            .shared
            .store
            .write(move |conn| store::leave(conn, &membership))
            .await
        {
            // The member row and any lease left behind expire after the session timeout.
            tracing::warn!(group = %self.shared.membership.group, error = %e, "embedded log could not leave the group");
        }
        true
    }
}
