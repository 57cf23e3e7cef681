//! `LISTEN` on a PostgreSQL channel, for triggers woken by commits made anywhere (a
//! service's HTTP half on Spin writes its outbox and notifies; the relay in this host
//! wakes). One connection per listener, outside the guests' pools; it reconnects with
//! a growing pause and wakes the trigger after each (re)connection, since a
//! notification sent while it was away is lost.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::{Notify, watch};
use tokio_postgres::AsyncMessage;

const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// Wakes `wake` on every notification on `channel` of the server `config` names,
/// until `stop` is true. `channel` must be an SQL identifier (the manifest checks).
pub async fn listen(
    config: tokio_postgres::Config,
    channel: String,
    label: String,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut retry = FIRST_RETRY;
    while !*stop.borrow() {
        let outcome = tokio::select! {
            outcome = listen_once(&config, &channel, &wake, &mut retry) => outcome,
            _ = stop.changed() => return,
        };
        if let Err(e) = outcome {
            tracing::warn!(trigger = %label, channel, error = %e, retry_in_ms = retry.as_millis() as u64, "LISTEN connection lost");
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.changed() => return,
        }
        retry = (retry * 2).min(LAST_RETRY);
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    wake: &Notify,
    retry: &mut Duration,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {channel}");
    {
        let listening = client.batch_execute(&statement);
        tokio::pin!(listening);
        // The connection must be polled for the LISTEN to complete.
        loop {
            tokio::select! {
                done = &mut listening => { done?; break; }
                message = messages.next() => match message {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                },
            }
        }
    }
    *retry = FIRST_RETRY;
    // Whatever was committed while no one listened.
    wake.notify_one();
    while let Some(message) = messages.next().await {
        if let AsyncMessage::Notification(_) = message? {
            wake.notify_one();
        }
    }
    // `client` lives until here: dropping it would close the connection.
    drop(client);
    Ok(())
}
