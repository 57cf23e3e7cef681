//! WAL checkpoints on a thread of their own. SQLite's automatic checkpoint runs inside
//! the commit that crosses its threshold: on the committing thread (a tokio worker,
//! here one of two) and while that connection is the database's only writer, it
//! copies the log back into the file and fsyncs both, holding up every writer of the
//! file and every task of that worker for as long as the disk takes. Here the writer
//! counts its commits and, every [`COMMITS_PER_CHECKPOINT`], wakes a thread that runs
//! a passive checkpoint on its own connection: writers go on meanwhile, and what
//! reaches the disk, and when it is synced, is what SQLite's own checkpoint does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use rusqlite::Connection;

/// Commits between two checkpoints: about SQLite's default threshold of 1,000 log
/// pages at the ten or so pages a service's transaction dirties. (Every 1,000 commits
/// measured the same within the noise of `bench-orders`, with a log ten times longer.)
pub const COMMITS_PER_CHECKPOINT: u32 = 100;

/// The automatic checkpoint left on the writing connection, as a safety net should the
/// thread fall far behind (pages; SQLite's default is 1,000).
const FALLBACK_AUTOCHECKPOINT_PAGES: u32 = 20_000;

/// Leaves `writer`'s checkpoints to the thread, SQLite's own only as the fallback.
pub fn hand_over(writer: &Connection) -> rusqlite::Result<()> {
    writer.pragma_update(None, "wal_autocheckpoint", FALLBACK_AUTOCHECKPOINT_PAGES)
}

/// Wakes the checkpoint thread of one database file.
pub struct Checkpointer {
    commits: AtomicU32,
    every: u32,
    wake: SyncSender<()>,
}

impl Checkpointer {
    /// Starts the thread for the file at `path`, checkpointing every
    /// [`COMMITS_PER_CHECKPOINT`]; it ends when the `Checkpointer` is dropped.
    /// `connect` opens its connection (the same settings as the writer's).
    pub fn start(
        path: &Path,
        connect: impl FnOnce(&Path) -> anyhow::Result<Connection> + Send + 'static,
    ) -> anyhow::Result<Self> {
        Self::start_every(path, COMMITS_PER_CHECKPOINT, connect)
    }

    fn start_every(
        path: &Path,
        every: u32,
        connect: impl FnOnce(&Path) -> anyhow::Result<Connection> + Send + 'static,
    ) -> anyhow::Result<Self> {
        // One pending wake-up at most: commits during a checkpoint ask for one more.
        let (wake, woken) = sync_channel(1);
        let owned = path.to_path_buf();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(owned, connect, woken))?;
        Ok(Self {
            commits: AtomicU32::new(0),
            every: every.max(1),
            wake,
        })
    }

    /// The writer committed a write.
    pub fn committed(&self) {
        let count = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if count.is_multiple_of(self.every) {
            match self.wake.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {
                    tracing::warn!("the checkpoint thread has stopped; SQLite's own checkpoints take over")
                }
            }
        }
    }
}

fn run(path: PathBuf, connect: impl FnOnce(&Path) -> anyhow::Result<Connection>, woken: Receiver<()>) {
    let conn = match connect(&path) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %format!("{e:#}"), "cannot open a connection for checkpoints");
            return;
        }
    };
    while woken.recv().is_ok() {
        // PASSIVE: copies what no reader still needs, never waits for readers or writers.
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        match done {
            Ok((_, log_pages, copied)) => tracing::trace!(path = %path.display(), log_pages, copied, "checkpoint"),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "checkpoint failed; the next one retries"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn open(path: &Path) -> anyhow::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        Ok(conn)
    }

    /// The writer's own checkpoints are off here, so only the thread can have copied
    /// the log into the file.
    #[test]
    fn every_nth_commit_has_the_thread_copy_the_log_into_the_file() {
        let dir = std::env::temp_dir().join(format!("shop-wal-checkpoint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.sqlite");
        let writer = open(&path).unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        let checkpointer = Checkpointer::start_every(&path, 5, open).unwrap();
        for i in 0..4 {
            writer.execute("INSERT INTO t VALUES (?)", [i]).unwrap();
            checkpointer.committed();
        }
        std::thread::sleep(Duration::from_millis(100));
        let file_rows = || -> i64 {
            // Read the main file alone: a connection that ignores the log sees only
            // what was checkpointed.
            let file = Connection::open_with_flags(
                format!("file:{}?immutable=1", path.display()),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
            )
            .unwrap();
            file.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap_or(0)
        };
        assert_eq!(file_rows(), 0, "checkpointed before the fifth commit");

        writer.execute("INSERT INTO t VALUES (4)", []).unwrap();
        checkpointer.committed();
        let deadline = Instant::now() + Duration::from_secs(10);
        while file_rows() < 5 {
            assert!(Instant::now() < deadline, "the fifth commit was never checkpointed");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop((checkpointer, writer));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_thread_that_cannot_open_its_connection_leaves_the_writer_working() {
        let checkpointer = Checkpointer::start_every(Path::new("/nonexistent/dir/db"), 1, |p| {
            anyhow::bail!("cannot open {}", p.display())
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // Wakes a thread that is gone: logged, not a panic.
        checkpointer.committed();
        checkpointer.committed();
    }
}
