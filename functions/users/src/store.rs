//! Users, refresh tokens and the dev signing key in SQL; `user.registered` goes to the
//! outbox in the registration's transaction.

use shop_domain::ShopEvent;
use shop_domain::events::UserRegistered;
use shop_domain::sql::{Sql, SqlError, SqlValue, in_transaction, migrate};

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS users (
        id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, phone TEXT, name TEXT NOT NULL,
        password_hash TEXT NOT NULL, roles TEXT NOT NULL, created_at TEXT NOT NULL)",
    // Refresh tokens by hash, each in the family of the login it descends from. A used
    // token stays (marked) until its family ends: presenting it again is how a stolen
    // token shows, and ends the whole family.
    "CREATE TABLE IF NOT EXISTS refresh_grants (
        hash TEXT PRIMARY KEY, family TEXT NOT NULL, user_id TEXT NOT NULL,
        expires_at INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS refresh_grants_by_family ON refresh_grants (family)",
    "CREATE TABLE IF NOT EXISTS signing_keys (id INTEGER PRIMARY KEY CHECK (id = 0), der BLOB NOT NULL)",
    shop_domain::outbox::SCHEMA,
    shop_domain::outbox::OWN_SCHEMA,
    shop_domain::outbox::TRACE_COLUMNS[0],
    shop_domain::outbox::TRACE_COLUMNS[1],
];

/// What presenting a refresh token found.
#[derive(Debug, PartialEq)]
pub enum Refreshed {
    Valid {
        user_id: String,
        family: String,
    },
    /// Used before: its family (login session) is revoked now.
    Reused {
        family: String,
    },
    /// Never issued, expired, or its family ended.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct User {
    pub id: String,
    pub email: String,
    pub phone: Option<String>,
    pub name: String,
    pub roles: Vec<String>,
    pub created_at: String,
    #[serde(skip)]
    pub password_hash: String,
}

#[derive(Debug, PartialEq)]
pub enum StoreError {
    EmailTaken,
    Failed(String),
}

impl From<SqlError> for StoreError {
    fn from(e: SqlError) -> Self {
        StoreError::Failed(e.to_string())
    }
}

const COLUMNS: &str = "id, email, phone, name, password_hash, roles, created_at";

fn user_from_row(row: &[SqlValue]) -> Option<User> {
    let text = |i: usize| row.get(i).and_then(SqlValue::text).map(str::to_string);
    Some(User {
        id: text(0)?,
        email: text(1)?,
        phone: text(2),
        name: text(3)?,
        password_hash: text(4)?,
        roles: text(5)?
            .split(',')
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect(),
        created_at: text(6)?,
    })
}

pub struct Store<'a, D: Sql>(pub &'a D);

impl<D: Sql> Store<'_, D> {
    pub fn migrate(&self) -> Result<(), StoreError> {
        Ok(migrate(self.0, SCHEMA)?)
    }

    fn one(&self, filter: &str, value: &str) -> Result<Option<User>, StoreError> {
        let rows = self.0.execute(
            &format!("SELECT {COLUMNS} FROM users WHERE {filter} = ?"),
            &[value.into()],
        )?;
        Ok(rows.first().and_then(|r| user_from_row(r)))
    }

    pub fn by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.one("email", email)
    }

    pub fn by_phone(&self, phone: &str) -> Result<Option<User>, StoreError> {
        self.one("phone", phone)
    }

    pub fn by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.one("id", id)
    }

    /// Inserts `user` and its `user.registered` event atomically.
    pub fn create(&self, user: &User, event_id: String) -> Result<(), StoreError> {
        in_transaction(self.0, || {
            self.0
                .execute(
                    &format!("INSERT INTO users ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"),
                    &[
                        user.id.clone().into(),
                        user.email.clone().into(),
                        user.phone.clone().into(),
                        user.name.clone().into(),
                        user.password_hash.clone().into(),
                        user.roles.join(",").into(),
                        user.created_at.clone().into(),
                    ],
                )
                .map_err(|e| match e {
                    SqlError::Conflict(_) => StoreError::EmailTaken,
                    other => other.into(),
                })?;
            let event = ShopEvent::UserRegistered(UserRegistered {
                user_id: user.id.clone(),
                email: Some(user.email.clone()),
                phone: user.phone.clone(),
                name: user.name.clone(),
            });
            shop_domain::outbox::record(self.0, event_id, user.created_at.clone(), &event)?;
            Ok(())
        })
    }

    pub fn update_profile(&self, id: &str, name: Option<&str>, phone: Option<&str>) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE users SET name = COALESCE(CAST(? AS TEXT), name), phone = COALESCE(CAST(? AS TEXT), phone) WHERE id = ?",
            &[
                name.map(str::to_string).into(),
                phone.map(str::to_string).into(),
                id.into(),
            ],
        )?;
        Ok(())
    }

    pub fn save_refresh(&self, hash: &str, family: &str, user_id: &str, expires_at: i64) -> Result<(), StoreError> {
        self.0.execute(
            "INSERT INTO refresh_grants (hash, family, user_id, expires_at) VALUES (?, ?, ?, ?)",
            &[hash.into(), family.into(), user_id.into(), expires_at.into()],
        )?;
        Ok(())
    }

    /// Uses a refresh token (once): its user and family if it was valid at `now`. A
    /// token used before revokes its whole family.
    pub fn use_refresh(&self, hash: &str, now: i64) -> Result<Refreshed, StoreError> {
        let rows = self.0.execute(
            "UPDATE refresh_grants SET used = 1 WHERE hash = ? AND used = 0 RETURNING user_id, family, expires_at",
            &[hash.into()],
        )?;
        if let Some(row) = rows.first() {
            let text = |i: usize| row.get(i).and_then(SqlValue::text).unwrap_or_default().to_string();
            let expires_at = row.get(2).and_then(SqlValue::integer).unwrap_or(0);
            return Ok(match expires_at > now {
                true => Refreshed::Valid {
                    user_id: text(0),
                    family: text(1),
                },
                false => Refreshed::Unknown,
            });
        }
        let reused = self
            .0
            .execute("SELECT family FROM refresh_grants WHERE hash = ?", &[hash.into()])?;
        match reused.first().and_then(|r| r.first()).and_then(SqlValue::text) {
            Some(family) => {
                self.end_family(family)?;
                Ok(Refreshed::Reused {
                    family: family.to_string(),
                })
            }
            None => Ok(Refreshed::Unknown),
        }
    }

    /// The family (login session) of the refresh token `hash`, if it is known.
    pub fn family_of(&self, hash: &str) -> Result<Option<String>, StoreError> {
        let rows = self
            .0
            .execute("SELECT family FROM refresh_grants WHERE hash = ?", &[hash.into()])?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .and_then(SqlValue::text)
            .map(str::to_string))
    }

    /// Ends a login session: no refresh token of it works any more.
    pub fn end_family(&self, family: &str) -> Result<(), StoreError> {
        self.0
            .execute("DELETE FROM refresh_grants WHERE family = ?", &[family.into()])?;
        Ok(())
    }

    pub fn signing_key_der(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.0.execute("SELECT der FROM signing_keys WHERE id = 0", &[])?;
        Ok(rows.first().and_then(|r| match r.first() {
            Some(SqlValue::Blob(b)) => Some(b.clone()),
            _ => None,
        }))
    }

    /// Stores `der` unless another instance stored a key first; returns the stored one.
    pub fn keep_signing_key(&self, der: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        self.0.execute(
            "INSERT INTO signing_keys (id, der) VALUES (0, ?) ON CONFLICT (id) DO NOTHING",
            &[SqlValue::Blob(der)],
        )?;
        self.signing_key_der()?
            .ok_or_else(|| StoreError::Failed("signing key vanished".into()))
    }
}
