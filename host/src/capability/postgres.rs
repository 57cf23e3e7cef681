//! Outbound PostgreSQL (`spin:postgres@4.0.0`): the guest names a server address; the
//! host checks it against `allowed_outbound_hosts` (scheme `postgres`), then serves the
//! connection from a pool kept per address across requests.
//!
//! Values: booleans, integers, floats, text, bytea, uuid, jsonb and NULL are decoded
//! and encoded; integer/text arrays are encoded. Other column types reach the guest as
//! `unsupported(raw bytes)` and other parameter kinds are refused with
//! `bad-parameter`, rather than guessed at.

// The error type is the interface's `error` variant, fixed by the WIT.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::error::Error as _;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, Object, Pool, Runtime};
use tokio_postgres::types::{FromSql, ToSql, Type};
use wasmtime::component::Resource;

use super::Backends;
use super::allowed_hosts::AllowedHosts;
use crate::bindings::postgres4::spin::postgres::postgres::{
    self, Column, DbDataType, DbError, DbValue, Error, ParameterValue, QueryError, RowSet,
};
use crate::state::HostState;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const POOL_SIZE: usize = 16;

/// Connection pools by address, shared by every instance.
#[derive(Default)]
pub struct PostgresPools {
    pools: Mutex<HashMap<String, Pool>>,
}

impl PostgresPools {
    fn pool(&self, address: &str, config: tokio_postgres::Config) -> Result<Pool, Error> {
        let mut pools = self.pools.lock().expect("pool map lock");
        if let Some(pool) = pools.get(address) {
            return Ok(pool.clone());
        }
        let manager = Manager::new(config, tokio_postgres::NoTls);
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::ConnectionFailed(e.to_string()))?;
        pools.insert(address.to_string(), pool.clone());
        Ok(pool)
    }
}

/// Per-instance Postgres state.
pub struct PostgresAccess {
    pub allowed: Arc<AllowedHosts>,
    pub backends: Arc<Backends>,
}

/// An open connection as the guest holds it (returned to the pool when dropped).
pub struct PgConnection {
    client: Object,
}

/// Parses `address` and checks every host it names against the allow list.
fn authorize(address: &str, allowed: &AllowedHosts) -> Result<tokio_postgres::Config, Error> {
    let config = tokio_postgres::Config::from_str(address)
        .map_err(|e| Error::ConnectionFailed(format!("invalid address: {e}")))?;
    let ports = config.get_ports();
    for (i, host) in config.get_hosts().iter().enumerate() {
        let host = match host {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => {
                return Err(Error::ConnectionFailed(format!(
                    "unix socket {} is not reachable from components",
                    p.display()
                )));
            }
        };
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        if !allowed.allows("postgres", &host, Some(port)) {
            return Err(Error::ConnectionFailed(format!(
                "address postgres://{host}:{port} is not permitted: add it to allowed_outbound_hosts"
            )));
        }
    }
    Ok(config)
}

fn query_error(e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => Error::QueryFailed(QueryError::DbError(DbError {
            as_text: db.to_string(),
            severity: db.severity().to_string(),
            code: db.code().code().to_string(),
            message: db.message().to_string(),
            detail: db.detail().map(str::to_string),
            extras: Vec::new(),
        })),
        None if e.is_closed() => Error::ConnectionFailed(e.to_string()),
        None => Error::QueryFailed(QueryError::Text(
            e.source().map(|s| format!("{e}: {s}")).unwrap_or_else(|| e.to_string()),
        )),
    }
}

/// Turns a guest parameter into something tokio-postgres can bind.
fn to_sql(value: ParameterValue) -> Result<Box<dyn ToSql + Sync + Send>, Error> {
    Ok(match value {
        ParameterValue::Boolean(v) => Box::new(v),
        ParameterValue::Int8(v) => Box::new(v),
        ParameterValue::Int16(v) => Box::new(v),
        ParameterValue::Int32(v) => Box::new(v),
        ParameterValue::Int64(v) => Box::new(v),
        ParameterValue::Floating32(v) => Box::new(v),
        ParameterValue::Floating64(v) => Box::new(v),
        ParameterValue::Str(v) => Box::new(v),
        ParameterValue::Binary(v) => Box::new(v),
        ParameterValue::ArrayInt32(v) => Box::new(v),
        ParameterValue::ArrayInt64(v) => Box::new(v),
        ParameterValue::ArrayStr(v) => Box::new(v),
        ParameterValue::DbNull => Box::new(Option::<String>::None),
        other => {
            return Err(Error::BadParameter(format!(
                "{} parameters are not supported by this host yet",
                parameter_kind(&other)
            )));
        }
    })
}

fn parameter_kind(value: &ParameterValue) -> &'static str {
    match value {
        ParameterValue::Date(_) => "date",
        ParameterValue::Time(_) => "time",
        ParameterValue::Datetime(_) => "datetime",
        ParameterValue::Timestamp(_) => "timestamp",
        ParameterValue::Uuid(_) => "uuid",
        ParameterValue::Jsonb(_) => "jsonb",
        ParameterValue::Decimal(_) => "decimal",
        ParameterValue::RangeInt32(_) | ParameterValue::RangeInt64(_) | ParameterValue::RangeDecimal(_) => "range",
        ParameterValue::ArrayDecimal(_) => "decimal array",
        ParameterValue::Interval(_) => "interval",
        _ => "these",
    }
}

fn data_type(ty: &Type) -> DbDataType {
    match *ty {
        Type::BOOL => DbDataType::Boolean,
        Type::CHAR => DbDataType::Int8,
        Type::INT2 => DbDataType::Int16,
        Type::INT4 => DbDataType::Int32,
        Type::INT8 => DbDataType::Int64,
        Type::FLOAT4 => DbDataType::Floating32,
        Type::FLOAT8 => DbDataType::Floating64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DbDataType::Str,
        Type::BYTEA => DbDataType::Binary,
        Type::DATE => DbDataType::Date,
        Type::TIME => DbDataType::Time,
        Type::TIMESTAMP => DbDataType::Datetime,
        Type::TIMESTAMPTZ => DbDataType::Timestamp,
        Type::UUID => DbDataType::Uuid,
        Type::JSONB => DbDataType::Jsonb,
        Type::NUMERIC => DbDataType::Decimal,
        Type::INT4_ARRAY => DbDataType::ArrayInt32,
        Type::INT8_ARRAY => DbDataType::ArrayInt64,
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => DbDataType::ArrayStr,
        Type::INTERVAL => DbDataType::Interval,
        _ => DbDataType::Other(ty.name().to_string()),
    }
}

/// Any column value as its raw binary wire form, for types we do not decode.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

fn format_uuid(bytes: &[u8]) -> Option<String> {
    if bytes.len() != 16 {
        return None;
    }
    let hex = hex::encode(bytes);
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

fn db_value(row: &tokio_postgres::Row, index: usize, ty: &Type) -> Result<DbValue, Error> {
    fn get<'a, T: FromSql<'a>>(row: &'a tokio_postgres::Row, i: usize) -> Result<Option<T>, Error> {
        row.try_get(i).map_err(|e| Error::ValueConversionFailed(e.to_string()))
    }
    let value = match *ty {
        Type::BOOL => get::<bool>(row, index)?.map(DbValue::Boolean),
        Type::CHAR => get::<i8>(row, index)?.map(DbValue::Int8),
        Type::INT2 => get::<i16>(row, index)?.map(DbValue::Int16),
        Type::INT4 => get::<i32>(row, index)?.map(DbValue::Int32),
        Type::INT8 => get::<i64>(row, index)?.map(DbValue::Int64),
        Type::FLOAT4 => get::<f32>(row, index)?.map(DbValue::Floating32),
        Type::FLOAT8 => get::<f64>(row, index)?.map(DbValue::Floating64),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => get::<String>(row, index)?.map(DbValue::Str),
        Type::BYTEA => get::<Vec<u8>>(row, index)?.map(DbValue::Binary),
        Type::INT4_ARRAY => get::<Vec<Option<i32>>>(row, index)?.map(DbValue::ArrayInt32),
        Type::INT8_ARRAY => get::<Vec<Option<i64>>>(row, index)?.map(DbValue::ArrayInt64),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => get::<Vec<Option<String>>>(row, index)?.map(DbValue::ArrayStr),
        Type::UUID => match get::<Raw>(row, index)? {
            Some(Raw(bytes)) => Some(DbValue::Uuid(
                format_uuid(&bytes).ok_or_else(|| Error::ValueConversionFailed("malformed uuid".into()))?,
            )),
            None => None,
        },
        // jsonb's binary form is a version byte (1) followed by the JSON text.
        Type::JSONB => {
            get::<Raw>(row, index)?.map(|Raw(bytes)| DbValue::Jsonb(bytes.get(1..).unwrap_or_default().to_vec()))
        }
        _ => get::<Raw>(row, index)?.map(|Raw(bytes)| DbValue::Unsupported(bytes)),
    };
    Ok(value.unwrap_or(DbValue::DbNull))
}

fn bind(params: Vec<ParameterValue>) -> Result<Vec<Box<dyn ToSql + Sync + Send>>, Error> {
    params.into_iter().map(to_sql).collect()
}

fn refs(params: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}

impl HostState {
    fn pg_client(&self, connection: &Resource<PgConnection>) -> Result<&Object, Error> {
        Ok(&self
            .table
            .get(connection)
            .map_err(|e| Error::Other(e.to_string()))?
            .client)
    }
}

impl postgres::Host for HostState {}

impl postgres::HostConnection for HostState {
    async fn open(&mut self, address: String) -> Result<Resource<PgConnection>, Error> {
        let config = authorize(&address, &self.postgres.allowed)?;
        let pool = self.postgres.backends.postgres.pool(&address, config)?;
        let client = pool.get().await.map_err(|e| {
            let detail = e.source().map(|s| format!(": {s}")).unwrap_or_default();
            Error::ConnectionFailed(format!("{e}{detail}"))
        })?;
        self.table
            .push(PgConnection { client })
            .map_err(|e| Error::Other(e.to_string()))
    }

    async fn query(
        &mut self,
        connection: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<RowSet, Error> {
        let params = bind(params)?;
        let client = self.pg_client(&connection)?;
        let prepared = client.prepare(&statement).await.map_err(query_error)?;
        let rows = client.query(&prepared, &refs(&params)).await.map_err(query_error)?;
        let columns: Vec<Column> = prepared
            .columns()
            .iter()
            .map(|c| Column {
                name: c.name().to_string(),
                data_type: data_type(c.type_()),
            })
            .collect();
        let rows = rows
            .iter()
            .map(|row| {
                prepared
                    .columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| db_value(row, i, c.type_()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RowSet { columns, rows })
    }

    async fn execute(
        &mut self,
        connection: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<u64, Error> {
        let params = bind(params)?;
        let client = self.pg_client(&connection)?;
        client.execute(&statement, &refs(&params)).await.map_err(query_error)
    }

    async fn drop(&mut self, connection: Resource<PgConnection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_against_allowed_hosts() {
        let allowed = AllowedHosts::parse(["postgres://db.internal:5432"]).unwrap();
        assert!(authorize("postgres://app@db.internal/shop", &allowed).is_ok());
        assert!(authorize("host=db.internal port=5432 user=app", &allowed).is_ok());
        for denied in [
            "postgres://app@db.internal:6543/shop",
            "postgres://app@other/shop",
            "host=/tmp user=x",
        ] {
            assert!(
                matches!(authorize(denied, &allowed), Err(Error::ConnectionFailed(_))),
                "{denied}"
            );
        }
        assert!(matches!(
            authorize("not a url ://", &allowed),
            Err(Error::ConnectionFailed(_))
        ));
    }

    #[test]
    fn uuids_format_canonically() {
        let bytes = hex::decode("123e4567e89b12d3a456426614174000").unwrap();
        assert_eq!(format_uuid(&bytes).unwrap(), "123e4567-e89b-12d3-a456-426614174000");
        assert!(format_uuid(&[1, 2]).is_none());
    }
}
