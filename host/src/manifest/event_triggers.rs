//! The trigger tables this host adds to Spin's manifest: `[[trigger.kafka]]` (with
//! app-wide `[application.trigger.kafka]`), `[[trigger.cron]]` and
//! `[[trigger.outbox]]`.

use std::time::Duration;

use super::Manifest;

pub const KAFKA_KEYS: &[&str] = &[
    "component",
    "topics",
    "group",
    "max_retries",
    "retry_backoff_ms",
    "dead_letter_topic",
    "max_in_flight",
    "event_types",
    "ordering",
    "id",
];
pub const CRON_KEYS: &[&str] = &["component", "cron_expression", "id", "run_on_commit", "run_on_notify"];
pub const OUTBOX_KEYS: &[&str] = &[
    "component",
    "database",
    "database_url_variable",
    "table",
    "notify_channel",
    "source",
    "topics",
    "dead_letter_topic",
    "poll_interval_ms",
    "id",
];

/// One `[[trigger.kafka]]`: a component handling messages of `topics` in `group`.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaTrigger {
    pub component: String,
    pub topics: Vec<String>,
    /// Default: `<application name>-<component>`.
    pub group: String,
    /// Retries after the first failed attempt, before dead-lettering.
    pub max_retries: u32,
    /// Backoff before the first retry; it doubles with each further retry.
    pub retry_backoff: Duration,
    /// Default: `<topic>.dlq` for each message's own topic.
    pub dead_letter_topic: Option<String>,
    /// Handler calls running at once across the trigger's partitions (and, with
    /// [`MessageOrdering::Key`], within one).
    pub max_in_flight: usize,
    /// Which messages must wait for each other.
    pub ordering: MessageOrdering,
    /// This host's extension: the CloudEvents types (`ce_type` header) the component
    /// acts on. Other typed messages are committed without instantiating it, so a
    /// service sharing a topic with the commands meant for another pays nothing for
    /// them. Messages without `ce_type` always reach the component. Empty: all.
    pub event_types: Vec<String>,
}

/// `ordering` of a `[[trigger.kafka]]`: which messages of a partition are handled one
/// after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageOrdering {
    /// `"partition"` (the default): a partition's messages strictly in offset order,
    /// one at a time; partitions run side by side.
    #[default]
    Partition,
    /// `"key"`: messages with the same key (and keyless ones among themselves) in
    /// offset order; messages with different keys run side by side, also within a
    /// partition. Offsets are still committed only past messages that finished, so
    /// a crash redelivers from the oldest unfinished one (handlers must be
    /// idempotent, as at-least-once delivery needs anyway).
    Key,
}

impl KafkaTrigger {
    pub fn dead_letter_topic_for(&self, topic: &str) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{topic}.dlq"))
    }
}

/// One `[[trigger.cron]]`.
#[derive(Debug, Clone)]
pub struct CronTrigger {
    pub component: String,
    pub schedule: cron::Schedule,
    pub expression: String,
    /// This host's extension: the components whose commits (to SQLite or PostgreSQL,
    /// through this host) also run this one right away, e.g. the service an outbox
    /// relay publishes for; the schedule is then only the safety net.
    pub run_on_commit: Vec<String>,
    /// This host's extension: also run right after a PostgreSQL `NOTIFY` on a channel
    /// of the component's database, for commits made outside this host (the HTTP half
    /// on Spin).
    pub run_on_notify: Option<NotifySource>,
}

/// `run_on_notify = { channel = "…", url_variable = "…" }`: LISTEN on `channel` of the
/// PostgreSQL server in the component's variable `url_variable`.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifySource {
    pub channel: String,
    pub url_variable: String,
}

fn parse_notify_source(value: &toml::Value) -> Result<NotifySource, String> {
    let usage = "`run_on_notify` is { channel = \"orders_changed\", url_variable = \"database_url\" }";
    let table = value.as_table().ok_or(usage)?;
    let text = |key: &str| table.get(key).and_then(|v| v.as_str()).map(str::to_string).ok_or(usage);
    let source = NotifySource {
        channel: text("channel")?,
        url_variable: text("url_variable")?,
    };
    if let Some(key) = table
        .keys()
        .find(|k| !["channel", "url_variable"].contains(&k.as_str()))
    {
        return Err(format!("unknown key `{key}` in `run_on_notify`"));
    }
    if !sql_identifier(&source.channel) {
        return Err(format!(
            "`run_on_notify.channel` `{}` must be lower-case letters, digits and `_`",
            source.channel
        ));
    }
    Ok(source)
}

/// One `[[trigger.outbox]]`: the host publishes the rows a component's transactions
/// write to an outbox table of its database (see `trigger::outbox`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxTrigger {
    pub component: String,
    /// The SQLite database (a label the component is granted) holding the table.
    pub database: Option<String>,
    /// The component variable holding a PostgreSQL URL; when it is set and not empty,
    /// the table is in that database instead of `database`.
    pub database_url_variable: Option<String>,
    /// Default `outbox`.
    pub table: String,
    /// The PostgreSQL channel writers `NOTIFY` after adding rows; default: the table's
    /// name.
    pub notify_channel: String,
    /// The CloudEvents `source` of the published events; default `/<component>`.
    pub source: String,
    /// The topics rows may name; a row naming another goes to the dead-letter topic.
    pub topics: Vec<String>,
    /// Default `<component>.outbox.dlq`.
    pub dead_letter_topic: String,
    /// How often an idle relay looks anyway, for writers no commit signal or
    /// `NOTIFY` reaches (default 1 s).
    pub poll_interval: Duration,
}

fn sql_identifier(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn optional_text(table: &toml::Table, key: &str) -> Result<Option<String>, String> {
    match table.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
        Some(other) => Err(format!("`{key}` must be a non-empty string, found {other}")),
    }
}

pub fn parse_outbox_trigger(table: &toml::Table) -> Result<OutboxTrigger, String> {
    let component = component_of(table)?;
    let database = optional_text(table, "database")?;
    let database_url_variable = optional_text(table, "database_url_variable")?;
    if database.is_none() && database_url_variable.is_none() {
        return Err(
            "name the outbox's database: `database` (a SQLite label of the component) and/or \
             `database_url_variable` (its variable holding a PostgreSQL URL)"
                .into(),
        );
    }
    let name = |key: &str, default: &str| -> Result<String, String> {
        let value = optional_text(table, key)?.unwrap_or_else(|| default.to_string());
        match sql_identifier(&value) {
            true => Ok(value),
            false => Err(format!(
                "`{key}` `{value}` must be lower-case letters, digits and `_` (an SQL name of at most 63)"
            )),
        }
    };
    let table_name = name("table", "outbox")?;
    let notify_channel = name("notify_channel", &table_name)?;
    let topics = topic_list(table)?;
    let dead_letter_topic = optional_text(table, "dead_letter_topic")?.unwrap_or(format!("{component}.outbox.dlq"));
    check_topic_name(&dead_letter_topic)?;
    if topics.contains(&dead_letter_topic) {
        return Err(format!(
            "`dead_letter_topic` `{dead_letter_topic}` is also one of the outbox's topics"
        ));
    }
    Ok(OutboxTrigger {
        source: optional_text(table, "source")?.unwrap_or(format!("/{component}")),
        component,
        database,
        database_url_variable,
        table: table_name,
        notify_channel,
        topics,
        dead_letter_topic,
        poll_interval: Duration::from_millis(integer(table, "poll_interval_ms", 1000, 10, 86_400_000)? as u64),
    })
}

/// `topics`: at least one valid topic name.
fn topic_list(table: &toml::Table) -> Result<Vec<String>, String> {
    let topics: Vec<String> = match table.get("topics") {
        Some(toml::Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or("`topics` must be a list of strings")
            })
            .collect::<Result<_, _>>()?,
        Some(toml::Value::Array(_)) | None => return Err("`topics` must list at least one topic".into()),
        Some(other) => {
            return Err(format!(
                "`topics` must be a list of strings, found {}",
                other.type_str()
            ));
        }
    };
    for topic in &topics {
        check_topic_name(topic)?;
    }
    Ok(topics)
}

fn component_of(table: &toml::Table) -> Result<String, String> {
    match table.get("component") {
        Some(toml::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(toml::Value::String(_)) | None => Err("missing `component`".into()),
        Some(other) => Err(format!("`component` must be a string, found {}", other.type_str())),
    }
}

fn integer(table: &toml::Table, key: &str, default: i64, min: i64, max: i64) -> Result<i64, String> {
    match table.get(key) {
        None => Ok(default),
        Some(toml::Value::Integer(i)) if (min..=max).contains(i) => Ok(*i),
        Some(toml::Value::Integer(i)) => Err(format!("`{key}` must be between {min} and {max}, found {i}")),
        Some(other) => Err(format!("`{key}` must be an integer, found {}", other.type_str())),
    }
}

/// Kafka's topic-name rules (the brokers enforce the same).
pub fn check_topic_name(topic: &str) -> Result<(), String> {
    shop_broker::validate_topic(topic).map_err(|_| {
        format!("`{topic}` is not a valid topic name (1-249 characters of letters, digits, `.`, `_`, `-`)")
    })
}

pub fn parse_kafka_trigger(table: &toml::Table, app_name: &str) -> Result<KafkaTrigger, String> {
    let component = component_of(table)?;
    let topics = topic_list(table)?;
    let group = match table.get("group") {
        None => format!("{app_name}-{component}"),
        Some(toml::Value::String(g)) if !g.is_empty() => g.clone(),
        Some(_) => return Err("`group` must be a non-empty string".into()),
    };
    let dead_letter_topic = match table.get("dead_letter_topic") {
        None => None,
        Some(toml::Value::String(t)) => {
            check_topic_name(t)?;
            if topics.contains(t) {
                return Err(format!("`dead_letter_topic` `{t}` is also one of the trigger's topics"));
            }
            Some(t.clone())
        }
        Some(other) => {
            return Err(format!(
                "`dead_letter_topic` must be a string, found {}",
                other.type_str()
            ));
        }
    };
    let event_types = match table.get("event_types") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|t| match t.as_str() {
                Some(t) if !t.trim().is_empty() => Ok(t.to_string()),
                _ => Err("`event_types` must be a list of non-empty strings".to_string()),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "`event_types` must be a list of strings, found {}",
                other.type_str()
            ));
        }
    };
    Ok(KafkaTrigger {
        component,
        topics,
        event_types,
        group,
        max_retries: integer(table, "max_retries", 3, 0, 100)? as u32,
        retry_backoff: Duration::from_millis(integer(table, "retry_backoff_ms", 200, 0, 3_600_000)? as u64),
        dead_letter_topic,
        max_in_flight: integer(table, "max_in_flight", 4, 1, 1024)? as usize,
        ordering: match table.get("ordering") {
            None => MessageOrdering::Partition,
            Some(toml::Value::String(o)) if o == "partition" => MessageOrdering::Partition,
            Some(toml::Value::String(o)) if o == "key" => MessageOrdering::Key,
            Some(other) => return Err(format!("`ordering` is \"partition\" or \"key\", found {other}")),
        },
    })
}

pub fn parse_cron_trigger(table: &toml::Table) -> Result<CronTrigger, String> {
    let component = component_of(table)?;
    let expression = match table.get("cron_expression") {
        Some(toml::Value::String(e)) => e.trim().to_string(),
        Some(other) => {
            return Err(format!(
                "`cron_expression` must be a string, found {}",
                other.type_str()
            ));
        }
        None => return Err("missing `cron_expression`".into()),
    };
    let fields = expression.split_whitespace().count();
    if fields != 6 {
        return Err(format!(
            "`cron_expression` `{expression}` has {fields} fields; expected 6: sec min hour day-of-month month day-of-week"
        ));
    }
    let schedule = expression
        .parse::<cron::Schedule>()
        .map_err(|e| format!("`cron_expression` `{expression}`: {e}"))?;
    let run_on_commit = match table.get("run_on_commit") {
        None => Vec::new(),
        Some(toml::Value::Array(ids)) => ids
            .iter()
            .map(|id| id.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or("`run_on_commit` must list component ids as strings")?,
        Some(other) => {
            return Err(format!(
                "`run_on_commit` lists the components whose commits run this trigger (e.g. [\"products\"]), found {}",
                other.type_str()
            ));
        }
    };
    let run_on_notify = table.get("run_on_notify").map(parse_notify_source).transpose()?;
    Ok(CronTrigger {
        component,
        schedule,
        expression,
        run_on_commit,
        run_on_notify,
    })
}

impl Manifest {
    fn trigger_tables(&self, kind: &str) -> impl Iterator<Item = &toml::Table> {
        self.raw.trigger.get(kind).into_iter().flatten()
    }

    /// Every `[[trigger.kafka]]` entry that parses (others are reported by `validate`).
    pub fn kafka_triggers(&self) -> Vec<KafkaTrigger> {
        let app = &self.raw.application.name;
        self.trigger_tables("kafka")
            .filter_map(|t| parse_kafka_trigger(t, app).ok())
            .collect()
    }

    /// Every `[[trigger.cron]]` entry that parses.
    pub fn cron_triggers(&self) -> Vec<CronTrigger> {
        self.trigger_tables("cron")
            .filter_map(|t| parse_cron_trigger(t).ok())
            .collect()
    }

    /// Every `[[trigger.outbox]]` entry that parses.
    pub fn outbox_triggers(&self) -> Vec<OutboxTrigger> {
        self.trigger_tables("outbox")
            .filter_map(|t| parse_outbox_trigger(t).ok())
            .collect()
    }

    /// `[application.trigger.kafka]`, if present.
    pub fn kafka_settings(&self) -> Option<&toml::Table> {
        self.raw.application.trigger.get("kafka")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn kafka_triggers_get_defaults() {
        let t = parse_kafka_trigger(&table("component = \"saga\"\ntopics = [\"shop.orders\"]"), "shop").unwrap();
        assert_eq!(t.group, "shop-saga");
        assert_eq!((t.max_retries, t.max_in_flight), (3, 4));
        assert_eq!(t.retry_backoff, Duration::from_millis(200));
        assert_eq!(t.dead_letter_topic_for("shop.orders"), "shop.orders.dlq");
        assert_eq!(t.ordering, MessageOrdering::Partition);
        let keyed = parse_kafka_trigger(&table("component = \"a\"\ntopics = [\"t\"]\nordering = \"key\""), "app");
        assert_eq!(keyed.unwrap().ordering, MessageOrdering::Key);
    }

    #[test]
    fn kafka_trigger_mistakes_are_explained() {
        for (text, expected) in [
            ("component = \"a\"", "at least one topic"),
            ("component = \"a\"\ntopics = [\"bad topic\"]", "not a valid topic name"),
            (
                "component = \"a\"\ntopics = [\"t\"]\nmax_in_flight = 0",
                "between 1 and 1024",
            ),
            (
                "component = \"a\"\ntopics = [\"t\"]\ndead_letter_topic = \"t\"",
                "also one of",
            ),
            ("topics = [\"t\"]", "missing `component`"),
            (
                "component = \"a\"\ntopics = [\"t\"]\nordering = \"offset\"",
                "`ordering` is \"partition\" or \"key\", found \"offset\"",
            ),
        ] {
            let err = parse_kafka_trigger(&table(text), "app").unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn cron_expressions_need_six_fields() {
        let t = parse_cron_trigger(&table("component = \"c\"\ncron_expression = \"*/5 * * * * *\"")).unwrap();
        let mut upcoming = t.schedule.upcoming(chrono::Utc);
        let (a, b) = (upcoming.next().unwrap(), upcoming.next().unwrap());
        assert_eq!((b - a).num_seconds(), 5);
        let err = parse_cron_trigger(&table("component = \"c\"\ncron_expression = \"* * * * *\"")).unwrap_err();
        assert!(err.contains("has 5 fields"), "{err}");
        assert!(parse_cron_trigger(&table("component = \"c\"\ncron_expression = \"x * * * * *\"")).is_err());
    }

    #[test]
    fn cron_wake_ups_are_parsed_and_checked() {
        let base = "component = \"relay\"\ncron_expression = \"*/5 * * * * *\"\n";
        let t = parse_cron_trigger(&table(&format!(
            "{base}run_on_commit = [\"orders\"]\nrun_on_notify = {{ channel = \"orders_changed\", url_variable = \"database_url\" }}"
        )))
        .unwrap();
        assert_eq!(t.run_on_commit, ["orders"]);
        assert_eq!(
            t.run_on_notify,
            Some(NotifySource {
                channel: "orders_changed".into(),
                url_variable: "database_url".into(),
            })
        );
        for (wrong, expected) in [
            ("run_on_commit = true", "lists the components"),
            ("run_on_commit = [1]", "component ids as strings"),
            ("run_on_notify = \"orders_changed\"", "url_variable"),
            (
                "run_on_notify = { channel = \"Bad-Name\", url_variable = \"u\" }",
                "lower-case",
            ),
            (
                "run_on_notify = { channel = \"c\", url_variable = \"u\", x = 1 }",
                "unknown key `x`",
            ),
        ] {
            let err = parse_cron_trigger(&table(&format!("{base}{wrong}"))).unwrap_err();
            assert!(err.contains(expected), "{wrong}: {err}");
        }
    }

    #[test]
    fn outbox_triggers_get_defaults_and_mistakes_are_explained() {
        let t = parse_outbox_trigger(&table(
            "component = \"shop\"\ndatabase = \"shop\"\ntopics = [\"shop.events\"]",
        ))
        .unwrap();
        assert_eq!((t.table.as_str(), t.notify_channel.as_str()), ("outbox", "outbox"));
        assert_eq!(
            (t.source.as_str(), t.dead_letter_topic.as_str()),
            ("/shop", "shop.outbox.dlq")
        );
        assert_eq!(t.database_url_variable, None);
        let base = "component = \"c\"\ntopics = [\"t\"]\n";
        for (wrong, expected) in [
            ("", "name the outbox's database"),
            ("database = \"\"", "non-empty string"),
            ("database = \"d\"\ntable = \"Outbox; DROP\"", "SQL name"),
            ("database = \"d\"\nnotify_channel = \"a-b\"", "SQL name"),
            ("database = \"d\"\ndead_letter_topic = \"t\"", "also one of"),
            (
                "database = \"d\"\ndead_letter_topic = \"bad topic\"",
                "not a valid topic name",
            ),
        ] {
            let err = parse_outbox_trigger(&table(&format!("{base}{wrong}"))).unwrap_err();
            assert!(err.contains(expected), "{wrong}: {err}");
        }
        let err = parse_outbox_trigger(&table("component = \"c\"\ndatabase = \"d\"")).unwrap_err();
        assert!(err.contains("`topics` must list at least one topic"), "{err}");
    }
}
