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
    // Whether the address was proven (a code sent there came back). Until it is, the
    // account's password and phone are only the registrant's word: the first proof
    // ends them (and every session), so nobody can hold an address they do not own.
    "ALTER TABLE users ADD COLUMN email_verified INTEGER NOT NULL DEFAULT 0",
    // Whether the phone was proven by a code sent to it. Only a proven phone signs in
    // by SMS, and a phone proven for one account stops counting for any other.
    "ALTER TABLE users ADD COLUMN phone_verified INTEGER NOT NULL DEFAULT 0",
    "CREATE TABLE IF NOT EXISTS signing_keys (id INTEGER PRIMARY KEY CHECK (id = 0), der BLOB NOT NULL)",
    shop_domain::outbox::SCHEMA,
    shop_domain::outbox::MIGRATION[0],
    shop_domain::outbox::MIGRATION[1],
    shop_domain::outbox::MIGRATION[2],
    shop_domain::outbox::MIGRATION[3],
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
    pub email_verified: bool,
    pub phone_verified: bool,
    /// Empty: no password (ended by a proof of the address, or never set).
    #[serde(skip)]
    pub password_hash: String,
}

impl User {
    pub fn has_password(&self) -> bool {
        !self.password_hash.is_empty()
    }
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

const COLUMNS: &str = "id, email, phone, name, password_hash, roles, created_at, email_verified, phone_verified";

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
        email_verified: row.get(7).and_then(SqlValue::integer).unwrap_or(0) != 0,
        phone_verified: row.get(8).and_then(SqlValue::integer).unwrap_or(0) != 0,
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

    /// The account whose proven phone this is.
    pub fn by_verified_phone(&self, phone: &str) -> Result<Option<User>, StoreError> {
        let rows = self.0.execute(
            &format!("SELECT {COLUMNS} FROM users WHERE phone = ? AND phone_verified = 1"),
            &[phone.into()],
        )?;
        Ok(rows.first().and_then(|r| user_from_row(r)))
    }

    /// `phone` is proven for `user_id` (if it is still the account's phone); any
    /// other account that had proven it no longer has it.
    pub fn prove_phone(&self, user_id: &str, phone: &str) -> Result<bool, StoreError> {
        in_transaction(self.0, || {
            self.0.execute(
                "UPDATE users SET phone = NULL, phone_verified = 0 WHERE phone = ? AND id <> ?",
                &[phone.into(), user_id.into()],
            )?;
            let proven = self.0.execute(
                "UPDATE users SET phone_verified = 1 WHERE id = ? AND phone = ? RETURNING id",
                &[user_id.into(), phone.into()],
            )?;
            Ok(!proven.is_empty())
        })
    }

    pub fn by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.one("id", id)
    }

    /// Inserts `user` and its `user.registered` event atomically.
    pub fn create(&self, user: &User, event_id: String) -> Result<(), StoreError> {
        in_transaction(self.0, || {
            self.0
                .execute(
                    &format!("INSERT INTO users ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                    &[
                        user.id.clone().into(),
                        user.email.clone().into(),
                        user.phone.clone().into(),
                        user.name.clone().into(),
                        user.password_hash.clone().into(),
                        user.roles.join(",").into(),
                        user.created_at.clone().into(),
                        i64::from(user.email_verified).into(),
                        i64::from(user.phone_verified).into(),
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

    /// Sets the name and the phone given; a new phone is unproven until a code sent to
    /// it comes back.
    pub fn update_profile(&self, id: &str, name: Option<&str>, phone: Option<&str>) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE users SET name = COALESCE(CAST(? AS TEXT), name), \
             phone_verified = CASE WHEN CAST(? AS TEXT) IS NULL OR phone = CAST(? AS TEXT) THEN phone_verified ELSE 0 END, \
             phone = COALESCE(CAST(? AS TEXT), phone) WHERE id = ?",
            &[
                name.map(str::to_string).into(),
                phone.map(str::to_string).into(),
                phone.map(str::to_string).into(),
                phone.map(str::to_string).into(),
                id.into(),
            ],
        )?;
        Ok(())
    }

    /// The login sessions (refresh-token families) `user_id` has open.
    pub fn families_of_user(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let rows = self.0.execute(
            "SELECT DISTINCT family FROM refresh_grants WHERE user_id = ?",
            &[user_id.into()],
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| r.first().and_then(SqlValue::text).map(str::to_string))
            .collect())
    }

    /// The address of `user_id` is proven now. If it was not before, what was set
    /// without that proof ends: the password (or it becomes `new_password_hash`), the
    /// phone, and every login session. Whether the account was unproven until now.
    pub fn prove_email(&self, user_id: &str, new_password_hash: Option<&str>) -> Result<bool, StoreError> {
        in_transaction(self.0, || {
            let claimed = self.0.execute(
                "UPDATE users SET email_verified = 1, password_hash = '', phone = NULL, phone_verified = 0 \
                 WHERE id = ? AND email_verified = 0 RETURNING id",
                &[user_id.into()],
            )?;
            if let Some(hash) = new_password_hash {
                self.0.execute(
                    "UPDATE users SET password_hash = ? WHERE id = ?",
                    &[hash.into(), user_id.into()],
                )?;
            }
            if !claimed.is_empty() || new_password_hash.is_some() {
                self.0
                    .execute("DELETE FROM refresh_grants WHERE user_id = ?", &[user_id.into()])?;
            }
            Ok(!claimed.is_empty())
        })
    }

    /// The address of `user_id` is proven by its signed-in owner: nothing else changes.
    pub fn mark_email_verified(&self, user_id: &str) -> Result<(), StoreError> {
        self.0
            .execute("UPDATE users SET email_verified = 1 WHERE id = ?", &[user_id.into()])?;
        Ok(())
    }

    /// Replaces the password of `user_id` and ends every login session.
    pub fn change_password(&self, user_id: &str, password_hash: &str) -> Result<(), StoreError> {
        in_transaction(self.0, || {
            self.0.execute(
                "UPDATE users SET password_hash = ? WHERE id = ?",
                &[password_hash.into(), user_id.into()],
            )?;
            self.0
                .execute("DELETE FROM refresh_grants WHERE user_id = ?", &[user_id.into()])?;
            Ok(())
        })
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
