//! The SQLite side of the embedded log: schema, one writing connection, a small pool
//! of reader connections, and one function per operation.
//!
//! Writes ([`Store::write`]) are queued; whichever caller finds the writing connection
//! free runs everything queued in one `BEGIN IMMEDIATE` transaction, each operation in
//! its own savepoint, and goes on until the queue is empty. Reads run on the caller's
//! thread ([`Store::with_conn`]). Several processes may open the same file:
//! WAL mode lets readers run beside the one writer, and the immediate transaction takes
//! the write lock up front, so two writers never both read the same "next offset" or
//! both claim the same partition.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::assign::{self, Member};
use crate::{BrokerError, Delivery, Headers, Message, OutgoingMessage, TopicPartition};

/// Bumped when the schema changes incompatibly; a file from a newer build is refused.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL CHECK (partitions > 0)
);
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    record_offset INTEGER NOT NULL,
    record_key BLOB,
    payload BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    headers BLOB NOT NULL,
    PRIMARY KEY (topic, partition_id, record_offset)
);
CREATE TABLE IF NOT EXISTS committed_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition_id)
);
CREATE TABLE IF NOT EXISTS members (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    topics TEXT NOT NULL,
    heartbeat_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, member_id)
);
CREATE TABLE IF NOT EXISTS leases (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    member_id TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition_id)
);
CREATE INDEX IF NOT EXISTS leases_by_member ON leases (group_id, member_id);
";

/// How long a connection waits for another writer (this or another process).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept for reuse; more are opened on demand under load.
const MAX_IDLE_CONNECTIONS: usize = 16;

/// Why a store operation failed, before it becomes a [`BrokerError`] with the file name.
#[derive(Debug)]
pub(super) enum StoreError {
    Sql(rusqlite::Error),
    Io(std::io::Error),
    Corrupt(String),
    Rejected(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sql(e)
    }
}

pub(super) type StoreResult<T> = Result<T, StoreError>;

pub(super) struct Store {
    path: PathBuf,
    /// Idle reader connections.
    idle: Mutex<Vec<Connection>>,
    /// Every write of this process goes through it.
    writer: Mutex<Writer>,
}

/// Writes waiting for a transaction, and the connection that runs them while no
/// caller is running a batch on it.
struct Writer {
    queue: Vec<Box<dyn WriteJob>>,
    /// `None` while a caller runs a batch.
    conn: Option<Connection>,
}

/// Most writes one transaction runs.
const MAX_WRITE_BATCH: usize = 256;

impl Store {
    /// Opens (creating if needed) the log file, its schema and its writing connection.
    pub fn open(path: &Path) -> Result<Self, BrokerError> {
        let store = Store {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            writer: Mutex::new(Writer {
                queue: Vec::new(),
                conn: None,
            }),
        };
        // `connect` creates the parent directories.
        store.with_conn(|conn| {
            // WAL is a property of the file: set once, every later connection inherits it.
            conn.pragma_update(None, "journal_mode", "WAL")?;
            create_schema(conn)
        })?;
        let conn = store.connect().map_err(|e| store.error(e))?;
        store.writer().conn = Some(conn);
        Ok(store)
    }

    /// Runs `f` inside a savepoint of a transaction it shares with the writes queued
    /// beside it (group commit): one commit for however many producers and consumers
    /// wrote meanwhile, and no writer of this process ever waits in SQLite's busy
    /// handler for another. The caller that finds the writing connection free runs the
    /// queue on its own thread: a batch takes tens of microseconds, less than waking a
    /// writer thread and being woken by it cost on every publish. Only a writer of
    /// another process sharing the file can make that thread wait, in SQLite's busy
    /// handler (as a guest's SQLite statement can). Resolves once the transaction
    /// committed; `f`'s error undoes only its own work.
    pub async fn write<T, F>(&self, f: F) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let free = {
            let mut writer = self.writer();
            writer.queue.push(Box::new(Write { work: f, reply }));
            writer.conn.take()
        };
        if let Some(conn) = free {
            self.write_queued(conn);
        }
        // Dropped unanswered only if a batch panicked.
        answer.await.map_err(|_| {
            BrokerError::Unavailable(format!(
                "embedded event log {}: a write was abandoned",
                self.path.display()
            ))
        })?
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs what is queued, a batch per transaction, until the queue is empty; then
    /// hands the connection back. Checking the queue and handing back happen under
    /// one lock, so a write queued meanwhile is either run here or finds the
    /// connection free and runs itself.
    fn write_queued(&self, conn: Connection) {
        let mut holding = Holding {
            store: self,
            conn: Some(conn),
        };
        loop {
            let batch: Vec<_> = {
                let mut writer = self.writer();
                if writer.queue.is_empty() {
                    writer.conn = holding.conn.take();
                    return;
                }
                let n = writer.queue.len().min(MAX_WRITE_BATCH);
                writer.queue.drain(..n).collect()
            };
            if let Some(conn) = holding.conn.as_mut() {
                write_batch(conn, &self.path, batch);
            }
        }
    }

    /// Runs `f` on a pooled connection on the calling thread (reads: in WAL mode they
    /// never wait for writers, so they take microseconds and need no thread hop).
    pub fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> StoreResult<T>) -> Result<T, BrokerError> {
        let mut conn = match self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            Some(conn) => conn,
            None => self.connect().map_err(|e| self.error(e))?,
        };
        let result = f(&mut conn).map_err(|e| self.error(e));
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(conn);
        }
        result
    }

    fn connect(&self) -> StoreResult<Connection> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(StoreError::Io)?;
        }
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Without the planner's stability guarantee SQLite re-prepares a cached
        // statement whenever a `LIMIT ?` parameter is bound, i.e. on every read.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        // No memory map: a commit that grows the file makes every other connection
        // remap it, and each munmap is a TLB shootdown on every core.
        conn.pragma_update(None, "mmap_size", 0)?;
        // In WAL mode NORMAL still survives a process crash; only power loss can drop the
        // last commits, which is the trade-off Kafka's default fsync policy makes too.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(conn)
    }

    fn error(&self, e: StoreError) -> BrokerError {
        describe(&self.path, e)
    }
}

fn describe(path: &Path, e: StoreError) -> BrokerError {
    let path = path.display();
    match e {
        StoreError::Sql(e) => BrokerError::Unavailable(format!("embedded event log {path}: {e}")),
        StoreError::Io(e) => BrokerError::Unavailable(format!("embedded event log {path}: {e}")),
        StoreError::Corrupt(what) => BrokerError::Unavailable(format!("embedded event log {path} is corrupt: {what}")),
        StoreError::Rejected(why) => BrokerError::Rejected(why),
    }
}

/// One queued write: runs inside the batch's transaction, then hears how it ended.
trait WriteJob: Send {
    /// Runs the work in its own savepoint; the returned job answers the caller.
    fn run(self: Box<Self>, tx: &mut Transaction<'_>, path: &Path) -> Box<dyn WriteDone>;
    /// The batch's transaction could not even start.
    fn fail(self: Box<Self>, error: BrokerError);
}

trait WriteDone: Send {
    fn finish(self: Box<Self>, committed: Result<(), BrokerError>);
}

struct Write<F, T> {
    work: F,
    reply: oneshot::Sender<Result<T, BrokerError>>,
}

struct Written<T> {
    outcome: Result<T, BrokerError>,
    reply: oneshot::Sender<Result<T, BrokerError>>,
}

impl<F, T> WriteJob for Write<F, T>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
{
    fn run(self: Box<Self>, tx: &mut Transaction<'_>, path: &Path) -> Box<dyn WriteDone> {
        let Write { work, reply } = *self;
        let outcome = (|| {
            let savepoint = tx.savepoint()?;
            let value = work(&savepoint)?;
            savepoint.commit()?;
            Ok(value)
        })()
        .map_err(|e| describe(path, e));
        Box::new(Written { outcome, reply })
    }

    fn fail(self: Box<Self>, error: BrokerError) {
        let _ = self.reply.send(Err(error));
    }
}

impl<T: Send> WriteDone for Written<T> {
    fn finish(self: Box<Self>, committed: Result<(), BrokerError>) {
        let result = match (self.outcome, committed) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(e)) | (Err(e), _) => Err(e),
        };
        let _ = self.reply.send(result);
    }
}

/// The writing connection while a caller runs batches on it. Should a batch panic,
/// the connection (its transaction rolled back as it unwinds) goes back to the store,
/// so the writes queued behind it run with the next one.
struct Holding<'a> {
    store: &'a Store,
    conn: Option<Connection>,
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.store.writer().conn = Some(conn);
        }
    }
}

/// Runs `batch` in one immediate transaction, commits, and answers each write.
fn write_batch(conn: &mut Connection, path: &Path, batch: Vec<Box<dyn WriteJob>>) {
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let error = describe(path, StoreError::Sql(e));
            batch.into_iter().for_each(|job| job.fail(error.clone()));
            return;
        }
    };
    let done: Vec<Box<dyn WriteDone>> = batch.into_iter().map(|job| job.run(&mut tx, path)).collect();
    let committed = tx.commit().map_err(|e| describe(path, StoreError::Sql(e)));
    for job in done {
        job.finish(committed.clone());
    }
}

fn create_schema(conn: &mut Connection) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = query_row(&tx, "PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Rejected(format!(
            "the embedded event log was written by a newer version (schema {version}, this build knows {SCHEMA_VERSION})"
        )));
    }
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// `Connection::execute` through the statement cache (the plain one prepares anew).
fn execute(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// `Connection::query_row` through the statement cache.
fn query_row<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------
// Topics and records
// ---------------------------------------------------------------------------------

/// Creates `topic` with `partitions` unless it exists; returns its actual partition count.
fn ensure_topic_in(tx: &Connection, topic: &str, partitions: i32) -> StoreResult<i32> {
    execute(
        tx,
        "INSERT INTO topics (name, partitions) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
        params![topic, partitions],
    )?;
    Ok(query_row(
        tx,
        "SELECT partitions FROM topics WHERE name = ?1",
        [topic],
        |row| row.get(0),
    )?)
}

/// Creates every topic in `topics` that is missing, with `partitions` partitions.
pub(super) fn ensure_topics(tx: &Connection, topics: &[String], partitions: i32) -> StoreResult<()> {
    for topic in topics {
        ensure_topic_in(tx, topic, partitions)?;
    }
    Ok(())
}

/// Appends one record at `timestamp_ms`. `pick` chooses the partition once the
/// partition count is known: `known_partitions` (a topic's count never changes once it
/// exists), else read, creating the topic with `default_partitions` if missing. The
/// offset is the next one of that partition, read and written in the same immediate
/// transaction. Returns where the record landed and the topic's partition count.
pub(super) fn append(
    tx: &Connection,
    message: &OutgoingMessage,
    timestamp_ms: i64,
    known_partitions: Option<i32>,
    default_partitions: i32,
    pick: impl FnOnce(i32) -> i32,
) -> StoreResult<(Delivery, i32)> {
    let partitions = match known_partitions {
        Some(partitions) => partitions,
        None => ensure_topic_in(tx, &message.topic, default_partitions)?,
    };
    let partition = pick(partitions);
    let offset: i64 = query_row(
        tx,
        "SELECT COALESCE(MAX(record_offset) + 1, 0) FROM records WHERE topic = ?1 AND partition_id = ?2",
        params![message.topic, partition],
        |row| row.get(0),
    )?;
    execute(
        tx,
        "INSERT INTO records (topic, partition_id, record_offset, record_key, payload, timestamp_ms, headers)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            message.topic,
            partition,
            offset,
            message.key,
            message.payload,
            timestamp_ms,
            encode_headers(&message.headers),
        ],
    )?;
    Ok((Delivery { partition, offset }, partitions))
}

/// Up to `limit` records of `tp` from offset `from` on, in offset order.
pub(super) fn read(conn: &Connection, tp: &TopicPartition, from: i64, limit: usize) -> StoreResult<Vec<Message>> {
    let mut stmt = conn.prepare_cached(
        "SELECT record_offset, record_key, payload, timestamp_ms, headers FROM records
         WHERE topic = ?1 AND partition_id = ?2 AND record_offset >= ?3
         ORDER BY record_offset LIMIT ?4",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![tp.topic, tp.partition, from, limit], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, Option<Vec<u8>>>(1)?,
            row.get::<_, Vec<u8>>(2)?,
            row.get::<_, i64>(3)?,
            row.get::<_, Vec<u8>>(4)?,
        ))
    })?;
    let mut messages = Vec::new();
    for row in rows {
        let (offset, key, payload, timestamp_ms, headers) = row?;
        messages.push(Message {
            topic: tp.topic.clone(),
            partition: tp.partition,
            offset,
            key,
            payload,
            timestamp_ms,
            headers: decode_headers(&headers).map_err(|e| StoreError::Corrupt(format!("{tp}@{offset}: {e}")))?,
        });
    }
    Ok(messages)
}

/// Headers as a blob: for each header, u32 LE name length, name, u32 LE value length, value.
/// Kept in one column so a record is one row; order and repeated names are preserved.
fn encode_headers(headers: &Headers) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        for part in [name.as_bytes(), value.as_slice()] {
            let len = u32::try_from(part.len()).expect("a header part over 4 GiB");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

fn decode_headers(mut blob: &[u8]) -> Result<Headers, String> {
    fn take<'a>(blob: &mut &'a [u8]) -> Result<&'a [u8], String> {
        let (len, rest) = blob.split_first_chunk::<4>().ok_or("truncated header length")?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err("truncated header".to_string());
        }
        let (part, rest) = rest.split_at(len);
        *blob = rest;
        Ok(part)
    }
    let mut headers = Vec::new();
    while !blob.is_empty() {
        let name = String::from_utf8(take(&mut blob)?.to_vec()).map_err(|_| "header name is not UTF-8")?;
        headers.push((name, take(&mut blob)?.to_vec()));
    }
    Ok(headers)
}

// ---------------------------------------------------------------------------------
// Group membership, leases and offsets
// ---------------------------------------------------------------------------------

/// Who a consumer is in its group.
#[derive(Clone, Debug)]
pub(super) struct Membership {
    pub group: String,
    pub member_id: String,
    /// Sorted and without duplicates.
    pub topics: Vec<String>,
    pub session_ms: i64,
}

impl Membership {
    /// Topic names cannot contain newlines (Kafka allows `[a-zA-Z0-9._-]`; the broker
    /// rejects others), so a newline-joined list is unambiguous.
    fn topics_column(&self) -> String {
        self.topics.join("\n")
    }
}

/// What a heartbeat found out.
#[derive(Debug, Default)]
pub(super) struct Heartbeat {
    /// Every partition whose lease this member holds after the heartbeat.
    pub held: BTreeSet<TopicPartition>,
    /// Held partitions the caller did not know about (newly claimed), with the offset to
    /// start from: the group's committed offset, or 0.
    pub acquired: Vec<(TopicPartition, i64)>,
    /// Held partitions beyond this member's fair share: to hand back after the handshake.
    pub surplus: BTreeSet<TopicPartition>,
}

fn upsert_member(tx: &Connection, m: &Membership, now: i64) -> StoreResult<()> {
    execute(tx,
        "INSERT INTO members (group_id, member_id, topics, heartbeat_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (group_id, member_id) DO UPDATE SET topics = excluded.topics, heartbeat_ms = excluded.heartbeat_ms",
        params![m.group, m.member_id, m.topics_column(), now],
    )?;
    Ok(())
}

/// Joins the group: creates missing topics and the member row, so other members count
/// this one in their next balance even before its first heartbeat.
pub(super) fn join(tx: &Connection, m: &Membership, default_partitions: i32) -> StoreResult<()> {
    for topic in &m.topics {
        ensure_topic_in(tx, topic, default_partitions)?;
    }
    upsert_member(tx, m, now_ms())?;
    Ok(())
}

/// One heartbeat: refreshes this member and its leases, and when `balance` is set claims
/// the free partitions of its fair share and reports the ones it holds beyond it.
/// `known` are the partitions the caller already tracks (owned or being handed back).
pub(super) fn heartbeat(
    tx: &Connection,
    m: &Membership,
    balance: bool,
    known: &BTreeSet<TopicPartition>,
) -> StoreResult<Heartbeat> {
    let now = now_ms();
    let expires = now.saturating_add(m.session_ms);
    let live_since = now.saturating_sub(m.session_ms);

    upsert_member(tx, m, now)?;
    // A crashed member's row would otherwise stay forever; its leases expire on their own.
    execute(
        tx,
        "DELETE FROM members WHERE group_id = ?1 AND heartbeat_ms < ?2",
        params![m.group, live_since],
    )?;
    // Extends only leases still ours: one that expired and was claimed by another member
    // is gone for good and shows up below as missing from `held`.
    execute(
        tx,
        "UPDATE leases SET expires_ms = ?3 WHERE group_id = ?1 AND member_id = ?2",
        params![m.group, m.member_id, expires],
    )?;
    let mut held = leases_of(tx, m)?;

    let mut surplus = BTreeSet::new();
    if balance {
        let members = live_members(tx, &m.group, live_since)?;
        let partitions = partitions_of(tx, &members)?;
        let share = assign::share_of(&m.member_id, &members, &partitions);
        let unclaimed: Vec<TopicPartition> = share.difference(&held).cloned().collect();
        for tp in unclaimed {
            if try_claim(tx, m, &tp, now, expires)? {
                held.insert(tp);
            }
        }
        surplus = held.difference(&share).cloned().collect();
    }

    let mut acquired = Vec::new();
    for tp in held.difference(known) {
        acquired.push((tp.clone(), committed_offset(tx, &m.group, tp)?.unwrap_or(0)));
    }
    Ok(Heartbeat {
        held,
        acquired,
        surplus,
    })
}

fn leases_of(tx: &Connection, m: &Membership) -> StoreResult<BTreeSet<TopicPartition>> {
    let mut stmt =
        tx.prepare_cached("SELECT topic, partition_id FROM leases WHERE group_id = ?1 AND member_id = ?2")?;
    let rows = stmt.query_map(params![m.group, m.member_id], |row| {
        Ok(TopicPartition::new(row.get::<_, String>(0)?, row.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Members whose heartbeat is recent enough, sorted by id.
fn live_members(tx: &Connection, group: &str, live_since: i64) -> StoreResult<Vec<Member>> {
    let mut stmt = tx.prepare_cached(
        "SELECT member_id, topics FROM members WHERE group_id = ?1 AND heartbeat_ms >= ?2 ORDER BY member_id",
    )?;
    let rows = stmt.query_map(params![group, live_since], |row| {
        let topics: String = row.get(1)?;
        Ok(Member {
            id: row.get(0)?,
            topics: topics
                .split('\n')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every partition of every topic some live member subscribed to, sorted.
fn partitions_of(tx: &Connection, members: &[Member]) -> StoreResult<Vec<TopicPartition>> {
    let topics: BTreeSet<&String> = members.iter().flat_map(|m| &m.topics).collect();
    let mut partitions = Vec::new();
    for topic in topics {
        let count: Option<i32> = query_row(tx, "SELECT partitions FROM topics WHERE name = ?1", [topic], |row| {
            row.get(0)
        })
        .optional()?;
        partitions.extend((0..count.unwrap_or(0)).map(|p| TopicPartition::new(topic.as_str(), p)));
    }
    Ok(partitions)
}

/// Takes the lease on `tp` if nobody holds it or its holder let it expire.
fn try_claim(tx: &Connection, m: &Membership, tp: &TopicPartition, now: i64, expires: i64) -> StoreResult<bool> {
    let changed = execute(
        tx,
        "INSERT INTO leases (group_id, topic, partition_id, member_id, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (group_id, topic, partition_id) DO UPDATE
         SET member_id = excluded.member_id, expires_ms = excluded.expires_ms
         WHERE leases.expires_ms < ?6",
        params![m.group, tp.topic, tp.partition, m.member_id, expires, now],
    )?;
    Ok(changed == 1)
}

fn committed_offset(tx: &Connection, group: &str, tp: &TopicPartition) -> StoreResult<Option<i64>> {
    Ok(query_row(
        tx,
        "SELECT next_offset FROM committed_offsets WHERE group_id = ?1 AND topic = ?2 AND partition_id = ?3",
        params![group, tp.topic, tp.partition],
        |row| row.get(0),
    )
    .optional()?)
}

/// Drops this member's leases on `partitions` (after the revoke handshake).
pub(super) fn release(tx: &Connection, m: &Membership, partitions: &BTreeSet<TopicPartition>) -> StoreResult<()> {
    for tp in partitions {
        execute(
            tx,
            "DELETE FROM leases WHERE group_id = ?1 AND topic = ?2 AND partition_id = ?3 AND member_id = ?4",
            params![m.group, tp.topic, tp.partition, m.member_id],
        )?;
    }
    Ok(())
}

/// Leaves the group: drops every lease of this member and its member row.
pub(super) fn leave(tx: &Connection, m: &Membership) -> StoreResult<()> {
    execute(
        tx,
        "DELETE FROM leases WHERE group_id = ?1 AND member_id = ?2",
        params![m.group, m.member_id],
    )?;
    execute(
        tx,
        "DELETE FROM members WHERE group_id = ?1 AND member_id = ?2",
        params![m.group, m.member_id],
    )?;
    Ok(())
}

/// Stores the group's position on `tp` if this member still holds its lease. Checked and
/// written in one immediate transaction, so a member that lost the partition can never
/// overwrite the position its successor works from. Offsets only move forward.
pub(super) fn commit(tx: &Connection, m: &Membership, tp: &TopicPartition, next_offset: i64) -> StoreResult<()> {
    let holder: Option<String> = query_row(
        tx,
        "SELECT member_id FROM leases WHERE group_id = ?1 AND topic = ?2 AND partition_id = ?3",
        params![m.group, tp.topic, tp.partition],
        |row| row.get(0),
    )
    .optional()?;
    if holder.as_deref() != Some(m.member_id.as_str()) {
        return Err(StoreError::Rejected(format!(
            "commit of {tp} for group {:?} refused: the partition is no longer assigned to this consumer",
            m.group
        )));
    }
    execute(
        tx,
        "INSERT INTO committed_offsets (group_id, topic, partition_id, next_offset) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (group_id, topic, partition_id) DO UPDATE
         SET next_offset = MAX(next_offset, excluded.next_offset)",
        params![m.group, tp.topic, tp.partition, next_offset],
    )?;
    Ok(())
}

/// The group's committed position on `tp`, if any (for tests and tooling).
#[cfg(test)]
pub(super) fn committed(conn: &mut Connection, group: &str, tp: &TopicPartition) -> StoreResult<Option<i64>> {
    let tx = conn.transaction()?;
    let offset = committed_offset(&tx, group, tp)?;
    tx.commit()?;
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(member_id: &str, session_ms: i64) -> Membership {
        Membership {
            group: "g".into(),
            member_id: member_id.into(),
            topics: vec!["t".into()],
            session_ms,
        }
    }

    fn count_topics(store: &Store) -> i64 {
        store
            .with_conn(|conn| Ok(conn.query_row("SELECT COUNT(*) FROM topics", [], |row| row.get(0))?))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_all_commit_and_a_failing_one_undoes_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(&dir.path().join("log.db")).unwrap());
        let writes: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .write(move |conn| {
                            execute(
                                conn,
                                "INSERT INTO topics (name, partitions) VALUES (?1, 1)",
                                [format!("t{i}")],
                            )?;
                            if i % 50 == 7 {
                                return Err(StoreError::Rejected(format!("write {i} refused")));
                            }
                            Ok(i)
                        })
                        .await
                })
            })
            .collect();
        for (i, write) in writes.into_iter().enumerate() {
            match write.await.unwrap() {
                Ok(value) => assert_eq!(value, i),
                Err(e) => assert_eq!(
                    (i % 50, e.to_string().contains(&format!("write {i} refused"))),
                    (7, true)
                ),
            }
        }
        assert_eq!(count_topics(&store), 196, "every write but the 4 refused ones");
        assert!(store.writer().conn.is_some(), "the writing connection is free again");
    }

    #[tokio::test]
    async fn a_write_that_panics_leaves_the_store_writable() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(&dir.path().join("log.db")).unwrap());
        let panicking = store.clone();
        let outcome = tokio::spawn(async move {
            panicking
                .write(|conn| -> StoreResult<()> {
                    execute(conn, "INSERT INTO topics (name, partitions) VALUES ('lost', 1)", [])?;
                    panic!("a write's bug")
                })
                .await
        })
        .await;
        assert!(outcome.unwrap_err().is_panic());
        let next = store.write(|conn| {
            Ok(execute(
                conn,
                "INSERT INTO topics (name, partitions) VALUES ('kept', 1)",
                [],
            )?)
        });
        tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .expect("the next write runs")
            .unwrap();
        let names: Vec<String> = store
            .with_conn(|conn| {
                let mut statement = conn.prepare("SELECT name FROM topics")?;
                let names = statement.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
                Ok(names)
            })
            .unwrap();
        assert_eq!(names, ["kept"], "the panicking write's transaction was rolled back");
    }

    #[test]
    fn a_live_lease_is_kept_even_when_its_holder_looks_dead_to_another_member() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("log.db")).unwrap();
        let t0 = TopicPartition::new("t", 0);
        let a = membership("a", 10_000);
        // B's session timeout is so short that A looks dead to it, so t0 is in B's share;
        // A's lease still has ten seconds to run, and that is what decides.
        let b = membership("b", 1);
        let none = BTreeSet::new();

        store
            .with_conn(|conn| {
                join(conn, &a, 1)?;
                let beat = heartbeat(conn, &a, true, &none)?;
                assert_eq!(beat.held, BTreeSet::from([t0.clone()]));
                assert_eq!(beat.acquired, vec![(t0.clone(), 0)]);
                Ok(())
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        store
            .with_conn(|conn| {
                join(conn, &b, 1)?;
                let beat = heartbeat(conn, &b, true, &none)?;
                assert!(beat.held.is_empty(), "{beat:?}");
                assert!(matches!(commit(conn, &b, &t0, 1), Err(StoreError::Rejected(_))));
                commit(conn, &a, &t0, 1)?;
                // A keeps its partition; knowing it already, nothing is reported as new.
                let beat = heartbeat(conn, &a, true, &BTreeSet::from([t0.clone()]))?;
                assert_eq!(beat.held, BTreeSet::from([t0.clone()]));
                assert!(beat.acquired.is_empty() && beat.surplus.is_empty(), "{beat:?}");
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn headers_round_trip_with_repeats_and_binary_values() {
        let headers: Headers = vec![
            ("ce_type".into(), b"OrderPlaced".to_vec()),
            ("x".into(), vec![]),
            ("x".into(), vec![0, 255, 10]),
            (String::new(), b"empty name".to_vec()),
        ];
        assert_eq!(decode_headers(&encode_headers(&headers)).unwrap(), headers);
        assert!(decode_headers(&encode_headers(&Vec::new())).unwrap().is_empty());
        assert!(decode_headers(&[1, 0, 0]).is_err());
        assert!(decode_headers(&[5, 0, 0, 0, b'a']).is_err());
    }
}
