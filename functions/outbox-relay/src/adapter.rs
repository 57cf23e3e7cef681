//! The component side: the service's database (Spin SQLite, or PostgreSQL when
//! `database_url` is set) for the outbox, `wasi:messaging` for publishing, exported
//! as the cron trigger's handler.

use event_kit::cron::{Error, Guest, Metadata};
use shop_domain::sql::spin::SpinDatabase;

struct Relay;

impl Guest for Relay {
    fn handle_cron_event(_metadata: Metadata) -> Result<(), Error> {
        let variable =
            |name: &str| spin_sdk::variables::get(name).map_err(|e| Error::Other(format!("variable `{name}`: {e:?}")));
        let database = variable("database")?;
        let source = variable("source")?;
        let outbox = SpinDatabase::open_configured(&database).map_err(Error::Other)?;
        event_kit::relay_outbox(&outbox, &source).map_err(Error::Other)
    }
}

event_kit::cron::export_cron_handler!(Relay);
