//! The outbox trigger (`[[trigger.outbox]]`, this host's extension): the host
//! publishes the rows a component's transactions add to an outbox table, so an event
//! goes out if and only if the transaction that wrote it committed, with no relay
//! component and no schedule.
//!
//! - The table (documented in `docs/outbox.md`) is written with plain SQL, so a
//!   component behind `[[trigger.http]]` stays a Spin component and writes the same
//!   rows when Spin runs it.
//! - A pass publishes the oldest rows in order as CloudEvents, then deletes what the
//!   broker took ([`relay`]). It runs at start (what a dead process left goes out at
//!   once), after every commit of a write to the database in this host (SQLite), on
//!   every PostgreSQL `NOTIFY` on the outbox's channel (writers elsewhere, e.g. on
//!   SpinKube), and every second as a safety net.
//! - Rows that cannot be published as they are (a topic the outbox may not use, bad
//!   `headers`) go to its dead-letter topic.
//! - With several host replicas on one PostgreSQL database, one relays at a time
//!   ([`postgres`]). Delivery is at-least-once: consumers dedupe by `ce_id`.

mod metrics;
mod postgres;
pub mod relay;
mod sqlite;

use std::sync::Arc;

use anyhow::Context as _;
use shop_broker::Producer;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::{Trigger, TriggerContext};
use crate::app::LoadedComponent;
use crate::capability::sqlite::Databases;
use crate::manifest::OutboxTrigger;
pub(crate) use metrics::OutboxFamilies;
use relay::OutboxStore;

/// The outbox trigger over the app's broker and SQLite databases.
pub struct Outbox {
    pub producer: Option<Arc<dyn Producer>>,
    pub sqlite: Arc<Databases>,
}

impl Trigger for Outbox {
    const TYPE: &'static str = "outbox";
    const EXPORT: &'static str = "nothing (the host publishes)";

    /// The host does the work: any component may declare an outbox.
    fn exported(_: &LoadedComponent) -> bool {
        true
    }

    /// Starts a relay per `[[trigger.outbox]]`.
    fn start(self, context: &TriggerContext<'_>, tasks: &mut JoinSet<()>) -> anyhow::Result<()> {
        let outboxes = context.manifest.outbox_triggers();
        if outboxes.is_empty() {
            return Ok(());
        }
        let producer = self
            .producer
            .clone()
            .context("[[trigger.outbox]] needs the app's broker (Kafka or the embedded log)")?;
        let families = OutboxFamilies::register(context.metrics)?;
        for outbox in outboxes {
            let component = super::component::<Self>(context.components, &outbox.component)?;
            let wake = Arc::new(Notify::new());
            let (store, database) = self
                .store(&outbox, &component, &wake, context, tasks)
                .with_context(|| format!("[[trigger.outbox]] of `{}`", outbox.component))?;
            tracing::info!(component = %outbox.component, database, table = %outbox.table, "outbox relayed");
            tasks.spawn(relay::run(
                store,
                producer.clone(),
                outbox.clone(),
                families.of(&outbox.component, &database),
                wake,
                context.stop.clone(),
            ));
        }
        Ok(())
    }
}

impl Outbox {
    /// Where `outbox`'s table is (PostgreSQL when its URL variable holds a URL, else its
    /// SQLite database), what wakes its relay, and its name for metrics.
    fn store(
        &self,
        outbox: &OutboxTrigger,
        component: &LoadedComponent,
        wake: &Arc<Notify>,
        context: &TriggerContext<'_>,
        tasks: &mut JoinSet<()>,
    ) -> anyhow::Result<(Box<dyn OutboxStore>, String)> {
        let url = match &outbox.database_url_variable {
            None => String::new(),
            Some(variable) => component
                .capabilities
                .variables
                .get(variable)
                .map_err(|e| anyhow::anyhow!("variable `{variable}`: {e:?}"))?,
        };
        if !url.trim().is_empty() {
            let config = crate::capability::postgres::authorize(&url, &component.allowed_hosts)
                .map_err(|e| anyhow::anyhow!("database_url_variable: {e:?}"))?;
            let database = postgres_name(&config);
            tasks.spawn(crate::capability::postgres::listen::listen(
                config.clone(),
                outbox.notify_channel.clone(),
                format!("outbox of {}", outbox.component),
                wake.clone(),
                context.stop.clone(),
            ));
            return Ok((Box::new(postgres::PostgresOutbox::new(config, &outbox.table)), database));
        }
        let Some(label) = &outbox.database else {
            anyhow::bail!("its variable holds no PostgreSQL URL and it names no SQLite `database`");
        };
        let database = self
            .sqlite
            .get(label)
            .with_context(|| format!("no SQLite database labelled `{label}`"))?;
        database.watch_commits(wake.clone());
        let session = database.quiet_session(format!("outbox relay of {}", outbox.component).into());
        Ok((
            Box::new(sqlite::SqliteOutbox::new(session, &outbox.table)),
            label.clone(),
        ))
    }
}

/// `postgres://host:port/dbname`, without user or password.
fn postgres_name(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "?".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("postgres://{host}:{port}/{}", config.get_dbname().unwrap_or(""))
}
