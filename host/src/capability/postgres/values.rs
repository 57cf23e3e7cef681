//! Guest values ↔ PostgreSQL's binary wire format.
//!
//! tokio-postgres handles the scalar types it knows; the date/time, numeric, range,
//! interval, uuid and jsonb encodings are written here against the protocol's binary
//! formats so no calendar or decimal library is needed. Dates and times are UTC, as
//! Spin's interface says; `timestamp` is Unix seconds.

// The error type is the interface's `error` variant, fixed by the WIT.
#![allow(clippy::result_large_err)]

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::capability::postgres::bindings::spin::postgres::postgres::{
    DbDataType, DbValue, Error, Interval, ParameterValue, RangeBoundKind,
};

type BoxError = Box<dyn StdError + Sync + Send>;

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

// Range flags of the binary range format.
const RANGE_EMPTY: u8 = 0x01;
const RANGE_LOWER_INCLUSIVE: u8 = 0x02;
const RANGE_UPPER_INCLUSIVE: u8 = 0x04;
const RANGE_LOWER_INFINITE: u8 = 0x08;
const RANGE_UPPER_INFINITE: u8 = 0x10;

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's days-from-civil).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn valid_date(year: i32, month: u8, day: u8) -> Result<i64, Error> {
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    };
    if day == 0 || day > days_in_month {
        return Err(Error::BadParameter(format!("invalid date {year}-{month}-{day}")));
    }
    Ok(days_from_civil(year.into(), month.into(), day.into()))
}

fn time_micros(hour: u8, minute: u8, second: u8, nanos: u32) -> Result<i64, Error> {
    if hour > 23 || minute > 59 || second > 59 || nanos >= 1_000_000_000 {
        return Err(Error::BadParameter(format!(
            "invalid time {hour}:{minute}:{second}.{nanos:09}"
        )));
    }
    Ok(
        ((i64::from(hour) * 60 + i64::from(minute)) * 60 + i64::from(second)) * MICROS_PER_SECOND
            + i64::from(nanos) / 1000,
    )
}

fn split_time(micros: i64) -> (u8, u8, u8, u32) {
    let seconds = micros.div_euclid(MICROS_PER_SECOND);
    let nanos = (micros.rem_euclid(MICROS_PER_SECOND) * 1000) as u32;
    (
        (seconds / 3600) as u8,
        (seconds / 60 % 60) as u8,
        (seconds % 60) as u8,
        nanos,
    )
}

type DateTimeTuple = (i32, u8, u8, u8, u8, u8, u32);

fn datetime_micros((y, mo, d, h, mi, s, ns): DateTimeTuple) -> Result<i64, Error> {
    let days = valid_date(y, mo, d)? - PG_EPOCH_DAYS;
    Ok(days * MICROS_PER_DAY + time_micros(h, mi, s, ns)?)
}

fn split_datetime(micros: i64) -> DateTimeTuple {
    let days = micros.div_euclid(MICROS_PER_DAY) + PG_EPOCH_DAYS;
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, ns) = split_time(micros.rem_euclid(MICROS_PER_DAY));
    (y as i32, mo as u8, d as u8, h, mi, s, ns)
}

// ---- numeric ---------------------------------------------------------------------

const NUMERIC_NEGATIVE: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;

/// Encodes base-10 text (`-12.3400`, `NaN`) as NUMERIC's base-10000 binary form.
fn encode_numeric(text: &str, out: &mut BytesMut) -> Result<(), BoxError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("nan") {
        out.put_i16(0);
        out.put_i16(0);
        out.put_u16(NUMERIC_NAN);
        out.put_i16(0);
        return Ok(());
    }
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty()) || !all_digits(int_part) || !all_digits(frac_part) {
        return Err(format!("`{text}` is not a decimal number").into());
    }
    let dscale = frac_part.len();
    // Pad the integer part on the left and the fraction on the right to whole
    // base-10000 groups; the weight is the group index of the first integer group.
    let int_part = int_part.trim_start_matches('0');
    let int_groups = int_part.len().div_ceil(4);
    let mut digits_text = "0".repeat(int_groups * 4 - int_part.len());
    digits_text.push_str(int_part);
    digits_text.push_str(frac_part);
    digits_text.push_str(&"0".repeat(frac_part.len().div_ceil(4) * 4 - frac_part.len()));
    let mut groups: Vec<i16> = digits_text
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap().parse().unwrap())
        .collect();
    let mut weight = int_groups as i64 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.put_i16(i16::try_from(groups.len())?);
    out.put_i16(i16::try_from(weight)?);
    out.put_u16(if negative && !groups.is_empty() {
        NUMERIC_NEGATIVE
    } else {
        0
    });
    out.put_i16(i16::try_from(dscale)?);
    for g in groups {
        out.put_i16(g);
    }
    Ok(())
}

fn read_i16(raw: &mut &[u8]) -> Result<i16, BoxError> {
    let (head, rest) = raw.split_at_checked(2).ok_or("truncated value")?;
    *raw = rest;
    Ok(i16::from_be_bytes([head[0], head[1]]))
}

fn read_i32(raw: &mut &[u8]) -> Result<i32, BoxError> {
    let (head, rest) = raw.split_at_checked(4).ok_or("truncated value")?;
    *raw = rest;
    Ok(i32::from_be_bytes(head.try_into()?))
}

fn read_i64(raw: &mut &[u8]) -> Result<i64, BoxError> {
    let (head, rest) = raw.split_at_checked(8).ok_or("truncated value")?;
    *raw = rest;
    Ok(i64::from_be_bytes(head.try_into()?))
}

/// Decodes NUMERIC's binary form to base-10 text with the column's scale.
fn decode_numeric(mut raw: &[u8]) -> Result<String, BoxError> {
    let ndigits = read_i16(&mut raw)?;
    let weight = i64::from(read_i16(&mut raw)?);
    let sign = read_i16(&mut raw)? as u16;
    let dscale = read_i16(&mut raw)?.max(0) as usize;
    if sign == NUMERIC_NAN {
        return Ok("NaN".into());
    }
    let groups = (0..ndigits)
        .map(|_| read_i16(&mut raw))
        .collect::<Result<Vec<_>, _>>()?;
    let group = |i: i64| -> i16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| groups.get(i).copied())
            .unwrap_or(0)
    };
    let mut text = String::new();
    if sign == NUMERIC_NEGATIVE {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&group(0).to_string());
        for i in 1..=weight {
            text.push_str(&format!("{:04}", group(i)));
        }
    }
    if dscale > 0 {
        let mut fraction = String::new();
        let mut i = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", group(i)));
            i += 1;
        }
        fraction.truncate(dscale);
        text.push('.');
        text.push_str(&fraction);
    }
    Ok(text)
}

// ---- parameters ------------------------------------------------------------------

fn put_i32(v: i32, out: &mut BytesMut) -> Result<(), BoxError> {
    out.put_i32(v);
    Ok(())
}

fn put_i64(v: i64, out: &mut BytesMut) -> Result<(), BoxError> {
    out.put_i64(v);
    Ok(())
}

/// A parameter already encoded in binary, with the server types it may be bound to.
#[derive(Debug)]
struct Encoded {
    bytes: Vec<u8>,
    accepts: &'static [Type],
    kind: &'static str,
}

impl ToSql for Encoded {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_slice(&self.bytes);
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    // The accepted types depend on the value, so the usual static check is replaced.
    fn to_sql_checked(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        if !self.accepts.contains(ty) {
            return Err(format!("a {} parameter cannot be bound to a {} column", self.kind, ty.name()).into());
        }
        self.to_sql(ty, out)
    }
}

/// Text-encoded values (numeric) checked the same way as [`Encoded`].
#[derive(Debug)]
struct NumericParam(String);

impl ToSql for NumericParam {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        encode_numeric(&self.0, out)?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

fn encoded(bytes: Vec<u8>, accepts: &'static [Type], kind: &'static str) -> Box<dyn ToSql + Sync + Send> {
    Box::new(Encoded { bytes, accepts, kind })
}

fn parse_uuid(text: &str) -> Result<Vec<u8>, Error> {
    let hex_digits: String = text.chars().filter(|c| *c != '-').collect();
    match hex::decode(&hex_digits) {
        Ok(bytes) if bytes.len() == 16 => Ok(bytes),
        _ => Err(Error::BadParameter(format!("`{text}` is not a UUID"))),
    }
}

type Bound<T> = Option<(T, RangeBoundKind)>;

/// Encodes a range from its bounds, each already encoded with `encode`.
fn encode_range<T>(
    (lower, upper): (Bound<T>, Bound<T>),
    mut encode: impl FnMut(T, &mut BytesMut) -> Result<(), BoxError>,
) -> Result<Vec<u8>, Error> {
    let mut flags = 0;
    let mut body = BytesMut::new();
    for (bound, infinite, inclusive) in [
        (lower, RANGE_LOWER_INFINITE, RANGE_LOWER_INCLUSIVE),
        (upper, RANGE_UPPER_INFINITE, RANGE_UPPER_INCLUSIVE),
    ] {
        match bound {
            None => flags |= infinite,
            Some((value, kind)) => {
                if matches!(kind, RangeBoundKind::Inclusive) {
                    flags |= inclusive;
                }
                let mut element = BytesMut::new();
                encode(value, &mut element).map_err(|e| Error::BadParameter(e.to_string()))?;
                body.put_i32(element.len() as i32);
                body.put_slice(&element);
            }
        }
    }
    let mut out = vec![flags];
    out.extend_from_slice(&body);
    Ok(out)
}

/// Encodes a one-dimensional array of `element_type` from already-encoded elements.
fn encode_array(element_type: &Type, elements: Vec<Option<Vec<u8>>>) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_i32(1);
    out.put_i32(i32::from(elements.iter().any(Option::is_none)));
    out.put_u32(element_type.oid());
    out.put_i32(elements.len() as i32);
    out.put_i32(1);
    for element in elements {
        match element {
            Some(bytes) => {
                out.put_i32(bytes.len() as i32);
                out.put_slice(&bytes);
            }
            None => out.put_i32(-1),
        }
    }
    out.to_vec()
}

fn numeric_bytes(text: &str) -> Result<Vec<u8>, Error> {
    let mut out = BytesMut::new();
    encode_numeric(text, &mut out).map_err(|e| Error::BadParameter(e.to_string()))?;
    Ok(out.to_vec())
}

/// Turns a guest parameter into something tokio-postgres can bind.
pub fn to_sql(value: ParameterValue) -> Result<Box<dyn ToSql + Sync + Send>, Error> {
    const DATETIMES: &[Type] = &[Type::TIMESTAMP, Type::TIMESTAMPTZ];
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
        ParameterValue::DbNull => Box::new(Null),
        ParameterValue::Date((y, m, d)) => {
            let days = valid_date(y, m, d)? - PG_EPOCH_DAYS;
            let days = i32::try_from(days).map_err(|_| Error::BadParameter("date out of range".into()))?;
            encoded(days.to_be_bytes().to_vec(), &[Type::DATE], "date")
        }
        ParameterValue::Time((h, m, s, ns)) => {
            encoded(time_micros(h, m, s, ns)?.to_be_bytes().to_vec(), &[Type::TIME], "time")
        }
        ParameterValue::Datetime(dt) => encoded(datetime_micros(dt)?.to_be_bytes().to_vec(), DATETIMES, "datetime"),
        ParameterValue::Timestamp(seconds) => {
            let micros = seconds
                .checked_sub(PG_EPOCH_DAYS * 86_400)
                .and_then(|s| s.checked_mul(MICROS_PER_SECOND))
                .ok_or_else(|| Error::BadParameter("timestamp out of range".into()))?;
            encoded(micros.to_be_bytes().to_vec(), DATETIMES, "timestamp")
        }
        ParameterValue::Uuid(text) => encoded(parse_uuid(&text)?, &[Type::UUID], "uuid"),
        ParameterValue::Jsonb(json) => {
            // jsonb's binary form is a version byte (1) followed by the JSON text.
            let mut bytes = vec![1];
            bytes.extend_from_slice(&json);
            encoded(bytes, &[Type::JSONB], "jsonb")
        }
        ParameterValue::Decimal(text) => {
            numeric_bytes(&text)?; // validate now: a bad number is the guest's error
            Box::new(NumericParam(text))
        }
        ParameterValue::RangeInt32(range) => encoded(encode_range(range, put_i32)?, &[Type::INT4_RANGE], "int32 range"),
        ParameterValue::RangeInt64(range) => encoded(encode_range(range, put_i64)?, &[Type::INT8_RANGE], "int64 range"),
        ParameterValue::RangeDecimal(range) => encoded(
            encode_range(range, |v: String, out| encode_numeric(&v, out))?,
            &[Type::NUM_RANGE],
            "decimal range",
        ),
        ParameterValue::ArrayDecimal(values) => {
            let elements = values
                .iter()
                .map(|v| v.as_deref().map(numeric_bytes).transpose())
                .collect::<Result<Vec<_>, _>>()?;
            encoded(
                encode_array(&Type::NUMERIC, elements),
                &[Type::NUMERIC_ARRAY],
                "decimal array",
            )
        }
        ParameterValue::Interval(Interval { micros, days, months }) => {
            let mut bytes = BytesMut::new();
            bytes.put_i64(micros);
            bytes.put_i32(days);
            bytes.put_i32(months);
            encoded(bytes.to_vec(), &[Type::INTERVAL], "interval")
        }
    })
}

// ---- columns ---------------------------------------------------------------------

pub fn data_type(ty: &Type) -> DbDataType {
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
        Type::TIMESTAMP | Type::TIMESTAMPTZ => DbDataType::Datetime,
        Type::UUID => DbDataType::Uuid,
        Type::JSONB => DbDataType::Jsonb,
        Type::NUMERIC => DbDataType::Decimal,
        Type::INT4_RANGE => DbDataType::RangeInt32,
        Type::INT8_RANGE => DbDataType::RangeInt64,
        Type::NUM_RANGE => DbDataType::RangeDecimal,
        Type::INT4_ARRAY => DbDataType::ArrayInt32,
        Type::INT8_ARRAY => DbDataType::ArrayInt64,
        Type::NUMERIC_ARRAY => DbDataType::ArrayDecimal,
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => DbDataType::ArrayStr,
        Type::INTERVAL => DbDataType::Interval,
        _ => DbDataType::Other(ty.name().to_string()),
    }
}

/// SQL NULL, which binds to a parameter of any type (`Option<T>::None` would only
/// bind where `T` does).
#[derive(Debug)]
struct Null;

impl ToSql for Null {
    fn to_sql(&self, _: &Type, _: &mut BytesMut) -> Result<IsNull, BoxError> {
        Ok(IsNull::Yes)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Any column value as its raw binary wire form.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

pub fn format_uuid(bytes: &[u8]) -> Option<String> {
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

fn decode_range<T>(
    raw: &[u8],
    mut decode: impl FnMut(&[u8]) -> Result<T, BoxError>,
) -> Result<(Bound<T>, Bound<T>), BoxError> {
    let (&flags, mut rest) = raw.split_first().ok_or("truncated range")?;
    if flags & RANGE_EMPTY != 0 {
        return Ok((None, None));
    }
    let mut bound = |infinite: u8, inclusive: u8| -> Result<Bound<T>, BoxError> {
        if flags & infinite != 0 {
            return Ok(None);
        }
        let len = usize::try_from(read_i32(&mut rest)?)?;
        let (element, tail) = rest.split_at_checked(len).ok_or("truncated range")?;
        rest = tail;
        let kind = if flags & inclusive != 0 {
            RangeBoundKind::Inclusive
        } else {
            RangeBoundKind::Exclusive
        };
        Ok(Some((decode(element)?, kind)))
    };
    let lower = bound(RANGE_LOWER_INFINITE, RANGE_LOWER_INCLUSIVE)?;
    let upper = bound(RANGE_UPPER_INFINITE, RANGE_UPPER_INCLUSIVE)?;
    Ok((lower, upper))
}

/// Elements of a one-dimensional array in binary form.
fn decode_array(mut raw: &[u8]) -> Result<Vec<Option<&[u8]>>, BoxError> {
    let dimensions = read_i32(&mut raw)?;
    let _has_nulls = read_i32(&mut raw)?;
    let _element_oid = read_i32(&mut raw)?;
    if dimensions == 0 {
        return Ok(Vec::new());
    }
    if dimensions != 1 {
        return Err("only one-dimensional arrays are supported".into());
    }
    let count = read_i32(&mut raw)?;
    let _lower_bound = read_i32(&mut raw)?;
    let mut elements = Vec::new();
    for _ in 0..count {
        let len = read_i32(&mut raw)?;
        if len < 0 {
            elements.push(None);
            continue;
        }
        let (element, rest) = raw.split_at_checked(len as usize).ok_or("truncated array")?;
        raw = rest;
        elements.push(Some(element));
    }
    Ok(elements)
}

/// Decodes the binary form of a type this module (rather than tokio-postgres) handles.
fn decode_raw(ty: &Type, raw: &[u8]) -> Result<DbValue, BoxError> {
    let mut cursor = raw;
    Ok(match *ty {
        Type::DATE => {
            let (y, m, d) = civil_from_days(i64::from(read_i32(&mut cursor)?) + PG_EPOCH_DAYS);
            DbValue::Date((y as i32, m as u8, d as u8))
        }
        Type::TIME => DbValue::Time(split_time(read_i64(&mut cursor)?)),
        Type::TIMESTAMP | Type::TIMESTAMPTZ => DbValue::Datetime(split_datetime(read_i64(&mut cursor)?)),
        Type::UUID => DbValue::Uuid(format_uuid(raw).ok_or("malformed uuid")?),
        // jsonb's binary form is a version byte (1) followed by the JSON text.
        Type::JSONB => DbValue::Jsonb(raw.get(1..).unwrap_or_default().to_vec()),
        Type::NUMERIC => DbValue::Decimal(decode_numeric(raw)?),
        Type::INT4_RANGE => DbValue::RangeInt32(decode_range(raw, |mut b| read_i32(&mut b))?),
        Type::INT8_RANGE => DbValue::RangeInt64(decode_range(raw, |mut b| read_i64(&mut b))?),
        Type::NUM_RANGE => DbValue::RangeDecimal(decode_range(raw, decode_numeric)?),
        Type::NUMERIC_ARRAY => DbValue::ArrayDecimal(
            decode_array(raw)?
                .into_iter()
                .map(|e| e.map(decode_numeric).transpose())
                .collect::<Result<_, _>>()?,
        ),
        Type::INTERVAL => DbValue::Interval(Interval {
            micros: read_i64(&mut cursor)?,
            days: read_i32(&mut cursor)?,
            months: read_i32(&mut cursor)?,
        }),
        _ => DbValue::Unsupported(raw.to_vec()),
    })
}

pub fn db_value(row: &tokio_postgres::Row, index: usize, ty: &Type) -> Result<DbValue, Error> {
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
        _ => match get::<Raw>(row, index)? {
            Some(Raw(bytes)) => {
                Some(decode_raw(ty, &bytes).map_err(|e| Error::ValueConversionFailed(format!("{}: {e}", ty.name())))?)
            }
            None => None,
        },
    };
    Ok(value.unwrap_or(DbValue::DbNull))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 1, 1), PG_EPOCH_DAYS);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        for days in [-800_000, -1, 0, 59, 10_957, 19_782, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert!(valid_date(2023, 2, 29).is_err());
        assert!(valid_date(2024, 2, 29).is_ok());
        assert!(valid_date(2024, 13, 1).is_err());
    }

    #[test]
    fn datetimes_split_back_to_their_parts() {
        let dt = (2026, 11, 22, 3, 18, 37, 123_456_000);
        assert_eq!(split_datetime(datetime_micros(dt).unwrap()), dt);
        let before_epoch = (1969, 7, 20, 20, 17, 40, 0);
        assert_eq!(split_datetime(datetime_micros(before_epoch).unwrap()), before_epoch);
        assert!(time_micros(24, 0, 0, 0).is_err());
    }

    fn numeric_round_trip(text: &str) -> String {
        let mut out = BytesMut::new();
        encode_numeric(text, &mut out).unwrap();
        decode_numeric(&out).unwrap()
    }

    #[test]
    fn numerics_keep_digits_and_scale() {
        for (input, expected) in [
            ("0", "0"),
            ("12345.6789", "12345.6789"),
            ("-0.0001", "-0.0001"),
            ("100000000", "100000000"),
            ("3.10", "3.10"),
            ("+42", "42"),
            ("0.000", "0.000"),
            ("98765432109876543210.5", "98765432109876543210.5"),
            ("NaN", "NaN"),
        ] {
            assert_eq!(numeric_round_trip(input), expected, "{input}");
        }
        assert!(encode_numeric("12a", &mut BytesMut::new()).is_err());
        assert!(encode_numeric("", &mut BytesMut::new()).is_err());
    }

    #[test]
    fn ranges_and_arrays_round_trip() {
        let range = (Some((1, RangeBoundKind::Inclusive)), None);
        let bytes = encode_range(range, put_i32).unwrap();
        let (lower, upper) = decode_range(&bytes, |mut b| read_i32(&mut b)).unwrap();
        assert!(matches!(lower, Some((1, RangeBoundKind::Inclusive))));
        assert!(upper.is_none());
        let array = encode_array(&Type::NUMERIC, vec![Some(numeric_bytes("1.5").unwrap()), None]);
        let elements = decode_array(&array).unwrap();
        assert_eq!(elements.len(), 2);
        assert_eq!(decode_numeric(elements[0].unwrap()).unwrap(), "1.5");
        assert!(elements[1].is_none());
    }

    #[test]
    fn uuids_parse_and_format_canonically() {
        let text = "123e4567-e89b-12d3-a456-426614174000";
        assert_eq!(format_uuid(&parse_uuid(text).unwrap()).unwrap(), text);
        assert!(format_uuid(&[1, 2]).is_none());
        assert!(parse_uuid("nope").is_err());
    }
}
