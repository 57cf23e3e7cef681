//! The cron trigger: runs a component's `handle-cron-event` (Spin's
//! `fermyon:spin-cron@2.0.0` world) on a 6-field schedule (seconds first), in UTC.
//!
//! With `run_on_commit = ["service"]` (this host's extension) it also runs right after
//! `service` commits a write, to SQLite or PostgreSQL: an outbox relay publishes at
//! once and its schedule is only the safety net. With `run_on_notify` it also runs on
//! each PostgreSQL `NOTIFY` on a channel, for commits made outside this host.
//!
//! Firings of one trigger never overlap: the next one is computed after the current
//! run ends, so a run longer than the interval skips the firings it covered (counted
//! as `skipped`).

use std::sync::{Arc, Weak};

use chrono::Utc;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument as _;
use wasmtime::Engine;

use super::{Trigger, TriggerContext};
use crate::app::LoadedComponent;
use crate::bindings::cron::fermyon::spin_cron::cron_types::Metadata;
use crate::capability::outbound_http::LocalServices;
use crate::instance::{Invocation, RequestLimits};
use crate::manifest::{CronTrigger, NotifySource};
use crate::metrics::Metrics;
use crate::telemetry::{Kind, Span};

struct CronRunner {
    trigger: CronTrigger,
    /// Set with `run_on_commit` or `run_on_notify`: notified by the listed components'
    /// commits, or by PostgreSQL notifications.
    commits: Option<Arc<tokio::sync::Notify>>,
    engine: Engine,
    component: Arc<LoadedComponent>,
    limits: RequestLimits,
    metrics: Arc<Metrics>,
    local: Weak<dyn LocalServices>,
}

impl CronRunner {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut previous: Option<chrono::DateTime<Utc>> = None;
        loop {
            let Some(next) = self.trigger.schedule.upcoming(Utc).next() else {
                tracing::warn!(component = %self.trigger.component, "cron expression has no future firing");
                return;
            };
            if let Some(previous) = previous {
                let missed = self.trigger.schedule.after(&previous).take_while(|t| *t < next).count();
                if missed > 0 {
                    self.count("skipped", missed as u64);
                }
            }
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            let commit = async {
                match &self.commits {
                    Some(commits) => commits.notified().await,
                    None => std::future::pending().await,
                }
            };
            let fired_at = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(wait) => {
                    previous = Some(next);
                    next
                }
                () = commit => Utc::now(),
            };
            let outcome = self.fire(fired_at.timestamp()).await;
            self.count(if outcome.is_ok() { "ok" } else { "error" }, 1);
            if let Err(e) = outcome {
                tracing::warn!(component = %self.trigger.component, scheduled = %fired_at, error = %e, "cron run failed");
            }
        }
    }

    fn count(&self, outcome: &str, n: u64) {
        self.metrics
            .cron_runs
            .with_label_values(&[&self.trigger.component, outcome])
            .inc_by(n);
    }

    async fn fire(&self, scheduled_unix: i64) -> Result<(), String> {
        let Some(pre) = &self.component.exports.cron else {
            return Err("no handle-cron-event export".into());
        };
        let request_id = format!("cron/{}/{scheduled_unix}", self.trigger.component);
        // Each run starts a trace of its own (what a relay publishes continues the
        // traces of the events' writers instead).
        let mut span = Span::start(format!("cron {}", self.trigger.component), Kind::Internal, None, false);
        span.set("faas.trigger", "timer");
        span.set("shop.component", self.trigger.component.clone());
        let Invocation { mut store, watch } = Invocation::new(
            &self.engine,
            &self.component,
            self.limits,
            self.local.clone(),
            &request_id,
            &span.context,
        );
        let metadata = Metadata {
            timestamp: scheduled_unix.max(0) as u64,
        };
        let call = async {
            let instance = pre.instantiate_async(&mut store).await?;
            instance.call_handle_cron_event(&mut store, metadata).await
        };
        let _in_flight = crate::metrics::InFlight::new(&self.metrics, &self.trigger.component, "cron");
        let result = match watch
            .run(call.instrument(crate::telemetry::log_span(&span.context)))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(returned)) => Err(format!("handler returned {returned:?}")),
            Err(failed) => Err(failed.describe()),
        };
        if let Err(error) = &result {
            span.fail(error.clone());
        }
        span.finish();
        result
    }
}

/// With `run_on_notify`: LISTENs on the channel of the PostgreSQL server in the
/// component's `url_variable`, when that is a PostgreSQL URL (on SQLite there is
/// nothing to listen to: commits in this host wake the trigger through
/// `run_on_commit`).
fn listen_for_notifications(
    trigger: &CronTrigger,
    source: &NotifySource,
    component: &LoadedComponent,
    wake: Arc<tokio::sync::Notify>,
    stop: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let url = component
        .capabilities
        .variables
        .get(&source.url_variable)
        .map_err(|e| {
            anyhow::anyhow!(
                "cron trigger of `{}`: run_on_notify.url_variable: {e:?}",
                trigger.component
            )
        })?;
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        return Ok(());
    }
    let config = crate::capability::postgres::authorize(&url, &component.allowed_hosts)
        .map_err(|e| anyhow::anyhow!("cron trigger of `{}`: run_on_notify: {e:?}", trigger.component))?;
    tracing::info!(component = %trigger.component, channel = %source.channel, "cron trigger listens for notifications");
    tasks.spawn(crate::capability::postgres::listen::listen(
        config,
        source.channel.clone(),
        trigger.component.clone(),
        wake,
        stop.clone(),
    ));
    Ok(())
}

/// The cron trigger: Spin's schedules, and this host's `run_on_commit` and
/// `run_on_notify` wake-ups.
pub struct Cron;

impl Trigger for Cron {
    const TYPE: &'static str = "cron";
    const EXPORT: &'static str = "fermyon:spin-cron's handle-cron-event";

    fn exported(component: &LoadedComponent) -> bool {
        component.exports.cron.is_some()
    }

    /// Schedules every `[[trigger.cron]]`.
    fn start(self, context: &TriggerContext<'_>, tasks: &mut JoinSet<()>) -> anyhow::Result<()> {
        for trigger in context.manifest.cron_triggers() {
            let component = super::component::<Self>(context.components, &trigger.component)?;
            tracing::info!(component = %trigger.component, schedule = %trigger.expression, run_on_commit = ?trigger.run_on_commit, "cron trigger scheduled");
            let woken = !trigger.run_on_commit.is_empty() || trigger.run_on_notify.is_some();
            let commits = woken.then(|| Arc::new(tokio::sync::Notify::new()));
            if let Some(wake) = &commits {
                for committer in &trigger.run_on_commit {
                    context.commits.watch(committer, wake.clone());
                }
                if let Some(source) = &trigger.run_on_notify {
                    listen_for_notifications(&trigger, source, &component, wake.clone(), context.stop, tasks)?;
                }
            }
            let runner = CronRunner {
                trigger,
                commits,
                engine: context.engine.clone(),
                component,
                limits: context.limits,
                metrics: context.metrics.clone(),
                local: context.local.clone(),
            };
            tasks.spawn(runner.run(context.stop.clone()));
        }
        Ok(())
    }
}
