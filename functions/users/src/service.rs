//! The users service's HTTP semantics, independent of spin-sdk.

use serde_json::{Value, json};
use shop_domain::sql::Sql;

use crate::accounts::{self, Login, ProfileUpdate, Refusal, Registration, refuse};
use crate::clients::ServiceClients;
use crate::keys::{SigningKey, sha256_hex};
use crate::otp::{self, Pending, Rejection};
use crate::store::{Refreshed, Store, StoreError, User};
use crate::throttle::{self, Failures};
use crate::tokens::{ACCESS_TTL_SECS, Issuer, REFRESH_TTL_SECS, SERVICE_TTL_SECS, new_refresh_token};

pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
    /// The caller the gateway verified (`x-shop-user`), if any.
    pub user: Option<&'a str>,
    /// That caller's roles (`x-shop-roles`, comma-separated).
    pub roles: &'a str,
    /// The client's address as the gateway saw it (`x-shop-client`), if any.
    pub client: Option<&'a str>,
}

impl Request<'_> {
    fn has_role(&self, role: &str) -> bool {
        self.roles.split(',').any(|r| r.trim() == role)
    }
}

pub struct Response {
    pub status: u16,
    pub body: Option<Value>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

/// Where pending one-time codes live (key-value in the component).
pub trait OtpStore {
    /// `Err` when the store cannot answer (as for `put`).
    fn get(&self, destination: &str) -> Result<Option<Pending>, String>;
    fn put(&self, destination: &str, pending: &Pending) -> Result<(), String>;
    fn remove(&self, destination: &str);
    /// Stores `next` if the state is still `current` (compare-and-swap): `Ok(false)`
    /// when another request changed it first, `Err` when the store cannot answer.
    fn replace(&self, destination: &str, current: &Pending, next: &Pending) -> Result<bool, String>;
}

/// Login-failure counters (key-value in the component).
pub trait FailureCounters {
    fn get(&self, key: &str) -> Option<Failures>;
    /// Stores `next` if the counter is still `current` (`None`: absent): `Ok(false)`
    /// when another request changed it first, `Err` when the store cannot answer.
    fn replace(&self, key: &str, current: Option<&Failures>, next: &Failures) -> Result<bool, String>;
    fn remove(&self, key: &str);
}

/// Why a login attempt does not go ahead now.
enum Held {
    /// Throttled: retry in this many seconds.
    Wait(u64),
    /// The counters cannot be read or written.
    StoreDown(String),
}

/// Counts one login attempt on the counter `key`, or says why not.
fn count_attempt(counters: &dyn FailureCounters, key: &str, free: u32, now_ms: i64) -> Result<(), Held> {
    count_with(counters, key, |current| throttle::attempt(current, free, now_ms))
}

/// Replaces the counter `key` by what `step` makes of it (compare-and-swap, again on
/// what a lost race left), or says why not: `step`'s wait, or the store's failure.
fn count_with(
    counters: &dyn FailureCounters,
    key: &str,
    step: impl Fn(Option<&Failures>) -> Result<Failures, u64>,
) -> Result<(), Held> {
    for _ in 0..CAS_RETRIES {
        let current = counters.get(key);
        let next = step(current.as_ref()).map_err(Held::Wait)?;
        if counters
            .replace(key, current.as_ref(), &next)
            .map_err(Held::StoreDown)?
        {
            return Ok(());
        }
    }
    Err(Held::Wait(1))
}

/// A 429 that says when to come back.
fn retry_later(code: &str, message: String, wait: u64) -> Response {
    Response {
        status: 429,
        body: Some(json!({ "error": { "code": code, "message": message } })),
        retry_after: Some(wait),
    }
}

/// A verification or login count that lost a compare-and-swap race tries again on
/// what it lost to, at most this often.
const CAS_RETRIES: usize = 32;

/// Hands a login code to the one service that sends it (notifications), directly:
/// never through a topic or the outbox.
pub trait OtpSender {
    fn send(&self, delivery: &shop_domain::types::OtpDelivery) -> Result<(), String>;
}

/// Where ended login sessions are announced to the gateway (the `default`
/// key-value store, shared with it).
pub trait EndedSessions {
    /// Marks `session` ended; its access tokens are all expired by `until` (Unix s).
    fn end(&self, session: &str, until: i64) -> Result<(), String>;
}

/// What the service needs from its surroundings.
pub struct Settings<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    /// Seeds an admin account on first login with exactly these credentials.
    pub admin: Option<(&'a str, &'a str)>,
    pub now: i64,
    pub now_text: String,
    pub new_id: &'a dyn Fn() -> String,
    pub otp: &'a dyn OtpStore,
    pub otp_sender: &'a dyn OtpSender,
    pub login_failures: &'a dyn FailureCounters,
    pub ended_sessions: &'a dyn EndedSessions,
    pub service_clients: &'a ServiceClients,
}

fn failed(e: StoreError) -> Refusal {
    match e {
        StoreError::EmailTaken => refuse(409, "conflict", "an account with this email already exists"),
        StoreError::Failed(m) => refuse(503, "unavailable", format!("storage unavailable: {m}")),
    }
}

fn ok(status: u16, body: Value) -> Result<Response, Refusal> {
    Ok(Response {
        status,
        body: Some(body),
        retry_after: None,
    })
}

pub fn handle(request: &Request<'_>, db: &impl Sql, key: &SigningKey, settings: &Settings<'_>) -> Response {
    match route(request, db, key, settings) {
        Ok(response) => response,
        Err((status, code, message)) => Response {
            status,
            body: Some(json!({ "error": { "code": code, "message": message } })),
            retry_after: None,
        },
    }
}

/// An access token and a refresh token in `family` (a new one for a fresh login).
fn tokens(
    db: &impl Sql,
    key: &SigningKey,
    settings: &Settings<'_>,
    user: &User,
    family: Option<&str>,
) -> Result<Response, Refusal> {
    let issuer = Issuer {
        key,
        issuer: settings.issuer,
        audience: settings.audience,
    };
    let family = family.map_or_else(|| (settings.new_id)(), str::to_string);
    let access = issuer.access_token(&user.id, &user.roles, settings.now, &family);
    let (refresh, hash) = new_refresh_token();
    Store(db)
        .save_refresh(&hash, &family, &user.id, settings.now + REFRESH_TTL_SECS)
        .map_err(failed)?;
    ok(
        200,
        json!({ "access_token": access, "refresh_token": refresh, "token_type": "Bearer", "expires_in": ACCESS_TTL_SECS }),
    )
}

/// 503 for a key-value store that did not answer: the detail goes to the log, not
/// to the client.
fn store_unavailable(what: &str, detail: &str) -> Refusal {
    eprintln!("users: {what}: {detail}");
    refuse(503, "unavailable", format!("{what}; try again shortly"))
}

/// Tells the gateway that `session` ended, for as long as its access tokens live.
fn end_session(settings: &Settings<'_>, session: &str) -> Result<(), String> {
    settings.ended_sessions.end(session, settings.now + ACCESS_TTL_SECS)
}

/// Ends every login session of `user_id` at the gateway (its refresh tokens go with
/// the change that asked for this, in the same transaction). Nothing is changed
/// when the gateway cannot be told.
fn end_sessions_of(db: &impl Sql, settings: &Settings<'_>, user_id: &str) -> Result<(), Refusal> {
    for family in Store(db).families_of_user(user_id).map_err(failed)? {
        end_session(settings, &family)
            .map_err(|e| store_unavailable("the account's sessions cannot be ended now", &e))?;
    }
    Ok(())
}

/// `response` (tokens) marked as the first proof of the account's address: any
/// password, phone and session set before it ended.
fn with_credentials_reset(mut response: Response, reset: bool) -> Response {
    if let Some(body) = response.body.as_mut() {
        body["credentials_reset"] = json!(reset);
    }
    response
}

fn register_user(
    db: &impl Sql,
    settings: &Settings<'_>,
    email: String,
    password: &str,
    name: String,
    roles: &[&str],
    email_verified: bool,
) -> Result<User, Refusal> {
    let user = User {
        id: (settings.new_id)(),
        email,
        phone: None,
        name,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        created_at: settings.now_text.clone(),
        email_verified,
        phone_verified: false,
        password_hash: accounts::hash_password(password),
    };
    Store(db).create(&user, (settings.new_id)()).map_err(failed)?;
    Ok(user)
}

/// The caller the gateway verified.
fn signed_in<'a>(request: &Request<'a>) -> Result<&'a str, Refusal> {
    request
        .user
        .ok_or_else(|| refuse(401, "unauthorized", "no authenticated user"))
}

fn refresh_token_of(body: &[u8]) -> Result<String, Refusal> {
    let value: Value = accounts::parse(body)?;
    value["refresh_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| refuse(400, "validation_failed", "`refresh_token` is required"))
}

fn route(request: &Request<'_>, db: &impl Sql, key: &SigningKey, settings: &Settings<'_>) -> Result<Response, Refusal> {
    let store = Store(db);
    store.migrate().map_err(failed)?;
    let not_allowed = |allowed: &str| refuse(405, "method_not_allowed", format!("allowed: {allowed}"));
    match (request.path.trim_end_matches('/'), request.method) {
        ("/.well-known/jwks.json", "GET") => ok(200, key.jwks()),
        ("/auth/register", "POST") => {
            let input: Registration = accounts::parse(request.body)?;
            let email = accounts::normalize_email(&input.email)?;
            accounts::check_password(&input.password)?;
            accounts::check_name(&input.name)?;
            // The configured admin address is the operator's: its account is made on
            // the admin's first login, and nobody may take it first.
            if settings
                .admin
                .is_some_and(|(admin_email, _)| admin_email.trim().eq_ignore_ascii_case(&email))
            {
                return Err(failed(StoreError::EmailTaken));
            }
            let user = register_user(
                db,
                settings,
                email,
                &input.password,
                input.name.trim().into(),
                &["customer"],
                false,
            )?;
            ok(201, json!(user))
        }
        ("/auth/login", "POST") => {
            let input: Login = accounts::parse(request.body)?;
            let email = accounts::normalize_email(&input.email)?;
            // The account's counter is counted before the password is checked, so
            // parallel guesses each take a turn; the client's only counts failures.
            let client = request.client.unwrap_or("unknown");
            let account_counter = throttle::account_key(&email, client);
            let client_counter = throttle::client_key(client);
            let every_client_counter = throttle::account_everywhere_key(&email);
            let now_ms = settings.now * 1000;
            let counted = count_attempt(
                settings.login_failures,
                &account_counter,
                throttle::FREE_PER_ACCOUNT,
                now_ms,
            )
            .and_then(|()| {
                let failures = settings.login_failures.get(&client_counter);
                throttle::attempt(failures.as_ref(), throttle::FREE_PER_CLIENT, now_ms)
                    .map(drop)
                    .map_err(Held::Wait)
            })
            .and_then(|()| {
                // Guesses from many addresses add up too: past them, password logins
                // of the account wait (a code mailed to the address still signs in).
                let failures = settings.login_failures.get(&every_client_counter);
                throttle::attempt(failures.as_ref(), throttle::FREE_PER_ACCOUNT_EVERYWHERE, now_ms)
                    .map(drop)
                    .map_err(Held::Wait)
            });
            match counted {
                Ok(()) => {}
                Err(Held::Wait(wait)) => {
                    return Ok(retry_later(
                        "too_many_attempts",
                        format!(
                            "too many failed logins: retry in {wait} s, or sign in with a code sent to your address"
                        ),
                        wait,
                    ));
                }
                Err(Held::StoreDown(e)) => return Err(store_unavailable("login attempts cannot be counted now", &e)),
            }
            let mut user = store.by_email(&email).map_err(failed)?;
            if user.is_none()
                && let Some((admin_email, admin_password)) = settings.admin
                && admin_email.eq_ignore_ascii_case(&email)
                && crate::secrets::same_secret(input.password.as_bytes(), admin_password.as_bytes())
            {
                let admin = register_user(
                    db,
                    settings,
                    email,
                    &input.password,
                    "Administrator".into(),
                    &["admin", "customer"],
                    // The operator configured this address: it is theirs.
                    true,
                );
                user = Some(admin?);
            }
            // An unknown address is checked against a hash too, so that it answers in
            // the time a wrong password takes.
            let hash = match &user {
                Some(user) if user.has_password() => user.password_hash.as_str(),
                _ => accounts::UNMATCHABLE_HASH,
            };
            let matches = accounts::password_matches(&input.password, hash);
            if user.is_none() {
                // No account to protect: only the client's counter goes on counting, and
                // no counter is left behind for every address ever tried.
                settings.login_failures.remove(&account_counter);
            }
            match user {
                Some(user) if matches => {
                    settings.login_failures.remove(&account_counter);
                    tokens(db, key, settings, &user, None)
                }
                // The same answer for an unknown email and a wrong password.
                other => {
                    // Counts toward the client's pause; a lost race only undercounts.
                    let _ = count_attempt(settings.login_failures, &client_counter, u32::MAX, now_ms);
                    if other.is_some() {
                        let _ = count_attempt(settings.login_failures, &every_client_counter, u32::MAX, now_ms);
                    }
                    Err(refuse(401, "invalid_credentials", "email or password is wrong"))
                }
            }
        }
        ("/auth/refresh", "POST") => {
            let token = refresh_token_of(request.body)?;
            let invalid = || refuse(401, "invalid_token", "refresh token is unknown, used or expired");
            let (user_id, family) = match store.use_refresh(&sha256_hex(&token), settings.now).map_err(failed)? {
                Refreshed::Valid { user_id, family } => (user_id, family),
                Refreshed::Reused { family } => {
                    // Its refresh tokens are dead already; its access tokens go too.
                    if let Err(e) = end_session(settings, &family) {
                        eprintln!("users: access tokens of a reused login stay valid until they expire: {e}");
                    }
                    return Err(refuse(
                        401,
                        "token_reused",
                        "this refresh token was used before: every token of its login is revoked, log in again",
                    ));
                }
                Refreshed::Unknown => return Err(invalid()),
            };
            let user = store.by_id(&user_id).map_err(failed)?.ok_or_else(invalid)?;
            tokens(db, key, settings, &user, Some(&family))
        }
        ("/auth/logout", "POST") => {
            let token = refresh_token_of(request.body)?;
            // Ends the login: this token and every one refreshed from the same login,
            // and the access tokens issued with them. The gateway hears of it first,
            // so a failure leaves the login whole for the client to try again.
            if let Some(family) = store.family_of(&sha256_hex(&token)).map_err(failed)? {
                end_session(settings, &family).map_err(|e| store_unavailable("the login cannot be ended now", &e))?;
                store.end_family(&family).map_err(failed)?;
            }
            Ok(Response {
                status: 204,
                body: None,
                retry_after: None,
            })
        }
        ("/auth/service-token", "POST") => {
            let input: ServiceCredentials = accounts::parse(request.body)?;
            if !settings
                .service_clients
                .authenticate(&input.client_id, &input.client_secret)
            {
                return Err(refuse(401, "invalid_client", "unknown service client or wrong secret"));
            }
            let issuer = Issuer {
                key,
                issuer: settings.issuer,
                audience: settings.audience,
            };
            ok(
                200,
                json!({
                    "access_token": issuer.service_token(&input.client_id, settings.now),
                    "token_type": "Bearer",
                    "expires_in": SERVICE_TTL_SECS,
                }),
            )
        }
        ("/auth/otp/request", "POST") => otp_request(request.body, db, settings),
        ("/auth/otp/verify", "POST") => otp_verify(request.body, db, key, settings),
        ("/auth/password/reset", "POST") => password_reset(request.body, db, key, settings),
        ("/users/me/email/verify", "POST") => email_proof(request.body, signed_in(request)?, db, settings),
        ("/users/me/phone/verify", "POST") => phone_proof(request.body, signed_in(request)?, db, settings),
        ("/users/me/password", "POST") => password_change(request, signed_in(request)?, db, key, settings),
        ("/users/me/email/verify" | "/users/me/phone/verify" | "/users/me/password", _) => Err(not_allowed("POST")),
        ("/users/me", method @ ("GET" | "PATCH")) => {
            let id = signed_in(request)?;
            if method == "PATCH" {
                let update: ProfileUpdate = accounts::parse(request.body)?;
                if let Some(name) = &update.name {
                    accounts::check_name(name)?;
                }
                let phone = update.phone.as_deref().map(accounts::normalize_phone).transpose()?;
                store
                    .update_profile(id, update.name.as_deref().map(str::trim), phone.as_deref())
                    .map_err(failed)?;
            }
            ok(200, json!(user_by_id(db, id)?))
        }
        ("/.well-known/jwks.json", _) | ("/users/me", _) => Err(not_allowed("GET")),
        (
            "/auth/register"
            | "/auth/login"
            | "/auth/refresh"
            | "/auth/logout"
            | "/auth/otp/request"
            | "/auth/otp/verify"
            | "/auth/password/reset"
            | "/auth/service-token",
            _,
        ) => Err(not_allowed("POST")),
        // Another service (e.g. notifications) looking up a user's contact details.
        (path, method) if path.starts_with("/users/") && path.matches('/').count() == 2 => {
            if method != "GET" {
                return Err(not_allowed("GET"));
            }
            if !(request.has_role("service") || request.has_role("admin")) {
                return Err(refuse(403, "forbidden", "a service or admin token is required"));
            }
            ok(200, json!(user_by_id(db, &path["/users/".len()..])?))
        }
        (path, _) => Err(refuse(404, "not_found", format!("no route for {path}"))),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceCredentials {
    client_id: String,
    client_secret: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OtpInput {
    email: Option<String>,
    phone: Option<String>,
    code: Option<String>,
}

/// The channel and normalized destination, and the account it belongs to (if any).
fn otp_destination(input: &OtpInput, db: &impl Sql) -> Result<(&'static str, String, Option<User>), Refusal> {
    let store = Store(db);
    match (&input.email, &input.phone) {
        (Some(email), None) => {
            let email = accounts::normalize_email(email)?;
            let user = store.by_email(&email).map_err(failed)?;
            Ok(("email", email, user))
        }
        (None, Some(phone)) => {
            let phone = accounts::normalize_phone(phone)?;
            // Only a proven phone signs in: anyone may type any number in a profile.
            let user = store.by_verified_phone(&phone).map_err(failed)?;
            Ok(("sms", phone, user))
        }
        _ => Err(refuse(
            400,
            "validation_failed",
            "give exactly one of `email` or `phone`",
        )),
    }
}

fn otp_request(body: &[u8], db: &impl Sql, settings: &Settings<'_>) -> Result<Response, Refusal> {
    let input: OtpInput = accounts::parse(body)?;
    if input.code.is_some() {
        return Err(refuse(400, "validation_failed", "`code` belongs to /auth/otp/verify"));
    }
    let (channel, destination, user) = otp_destination(&input, db)?;
    // Read for every destination, so an outage answers alike for unknown ones.
    let previous = settings
        .otp
        .get(&destination)
        .map_err(|e| store_unavailable("codes cannot be kept now", &e))?;
    // Unknown destinations get the same answer, so the endpoint does not reveal
    // accounts. A code sent moments ago still works: none is sent now, and the
    // answer is the same too (a 429 here would tell that the address has an account).
    if let Some(user) = user {
        let _sent_or_paused = send_code(db, settings, channel, &destination, &user, previous)?;
    }
    ok(202, json!({ "status": "sent", "expires_in": otp::TTL_MS / 1000 }))
}

/// Sends `user` a fresh code at `destination` (`previous`: what is pending there),
/// unless one was sent moments ago: then `Ok(Err(seconds))` until one may be.
fn send_code(
    db: &impl Sql,
    settings: &Settings<'_>,
    channel: &'static str,
    destination: &str,
    user: &User,
    previous: Option<Pending>,
) -> Result<Result<(), u64>, Refusal> {
    let code = otp::new_code();
    let pending = match otp::issue(previous.as_ref(), destination, &code, settings.now * 1000) {
        Ok(pending) => pending,
        Err(wait) => return Ok(Err(wait)),
    };
    let expires_at = shop_domain::time::rfc3339(pending.expires_ms / 1000);
    settings
        .otp
        .put(destination, &pending)
        .map_err(|e| store_unavailable("codes cannot be kept now", &e))?;
    let delivery = shop_domain::types::OtpDelivery {
        user_id: Some(user.id.clone()),
        channel: channel.into(),
        destination: destination.to_string(),
        code,
        expires_at: expires_at.clone(),
    };
    if let Err(e) = settings.otp_sender.send(&delivery) {
        // Not sent: no code is pending, so asking again is not throttled.
        settings.otp.remove(destination);
        return Err(refuse(503, "unavailable", format!("the code could not be sent: {e}")));
    }
    // What happened, for other services; the code stays out of it.
    let event = shop_domain::ShopEvent::OtpRequested(shop_domain::events::OtpRequested {
        user_id: Some(user.id.clone()),
        channel: channel.into(),
        destination: destination.to_string(),
        expires_at,
    });
    shop_domain::outbox::record(db, (settings.new_id)(), settings.now_text.clone(), &event)
        .map_err(|e| failed(StoreError::Failed(e.to_string())))?;
    Ok(Ok(()))
}

/// Checks `code` for the destination `input` names (one attempt, counted); the
/// channel and the account on success (`None`: nobody's destination, which a client
/// cannot tell from a wrong code).
fn check_code(
    input: &OtpInput,
    db: &impl Sql,
    settings: &Settings<'_>,
) -> Result<(&'static str, Option<User>), Refusal> {
    let code = input
        .code
        .clone()
        .filter(|c| c.len() == 6 && c.chars().all(|d| d.is_ascii_digit()))
        .ok_or_else(|| refuse(400, "validation_failed", "`code` must be 6 digits"))?;
    let (channel, destination, user) = otp_destination(input, db)?;
    // Wrong codes count per destination across codes too: a new code every 30 s must
    // not buy 5 new guesses each time.
    let guesses = throttle::code_guesses_key(&destination);
    let now_ms = settings.now * 1000;
    if let Err(wait) = throttle::attempt(
        settings.login_failures.get(&guesses).as_ref(),
        throttle::FREE_CODE_GUESSES,
        now_ms,
    ) {
        return Err(refuse(
            429,
            "too_many_attempts",
            format!("too many wrong codes for this address: retry in {wait} s"),
        ));
    }
    for _ in 0..CAS_RETRIES {
        let current = settings
            .otp
            .get(&destination)
            .map_err(|e| store_unavailable("codes cannot be checked now", &e))?;
        let (outcome, next) = match otp::verify(current.clone(), &destination, &code, settings.now * 1000) {
            Ok(used) => (Ok(()), Some(used)),
            Err((rejection, next)) => (Err(rejection), next),
        };
        // Each change is one compare-and-swap on the state this verification read.
        if let (Some(current), Some(next)) = (&current, &next)
            && !settings
                .otp
                .replace(&destination, current, next)
                .map_err(|e| store_unavailable("codes cannot be checked now", &e))?
        {
            continue;
        }
        if matches!(outcome, Err(Rejection::Wrong { .. } | Rejection::Locked)) && next.is_some() {
            // Counted after the fact (a lost race only undercounts by one); the
            // per-code count above already stops parallel guesses.
            let _ = count_attempt(settings.login_failures, &guesses, u32::MAX, now_ms);
        }
        return match outcome {
            Ok(()) => {
                settings.otp.remove(&destination);
                settings.login_failures.remove(&guesses);
                Ok((channel, user))
            }
            Err(rejection) => Err(match rejection {
                Rejection::Expired => refuse(401, "code_expired", "no valid code: request a new one"),
                Rejection::Locked => refuse(429, "too_many_attempts", "too many wrong codes: request a new one"),
                Rejection::Wrong { attempts_left } => refuse(
                    401,
                    "invalid_code",
                    format!("the code is wrong ({attempts_left} attempts left)"),
                ),
            }),
        };
    }
    Err(refuse(503, "unavailable", "too many verifications at once: try again"))
}

fn otp_verify(body: &[u8], db: &impl Sql, key: &SigningKey, settings: &Settings<'_>) -> Result<Response, Refusal> {
    let input: OtpInput = accounts::parse(body)?;
    let (channel, user) = check_code(&input, db, settings)?;
    let user = user.ok_or_else(|| refuse(401, "invalid_code", "the code is wrong"))?;
    // A code that came back from the address proves it. The first proof ends what
    // anyone set before it: a stranger who registered this address with a password
    // of his own loses it, and his sessions.
    let reset = if channel == "email" && !user.email_verified {
        end_sessions_of(db, settings, &user.id)?;
        Store(db).prove_email(&user.id, None).map_err(failed)?
    } else {
        false
    };
    tokens_after_proof(db, key, settings, &user.id, reset)
}

/// Tokens for a new login of `user_id`, just after a code proved it (`reset`: the
/// first proof of the address, which ended what was set before it).
fn tokens_after_proof(
    db: &impl Sql,
    key: &SigningKey,
    settings: &Settings<'_>,
    user_id: &str,
    reset: bool,
) -> Result<Response, Refusal> {
    let user = user_by_id(db, user_id)?;
    Ok(with_credentials_reset(tokens(db, key, settings, &user, None)?, reset))
}

/// The account `id` (404 when there is none).
fn user_by_id(db: &impl Sql, id: &str) -> Result<User, Refusal> {
    Store(db)
        .by_id(id)
        .map_err(failed)?
        .ok_or_else(|| refuse(404, "not_found", "no such user"))
}

/// Sends `user` a code at `destination` to prove it: 202, or 429 while the one sent
/// moments ago still works.
fn send_proof_code(
    db: &impl Sql,
    settings: &Settings<'_>,
    channel: &'static str,
    destination: &str,
    user: &User,
) -> Result<Response, Refusal> {
    let previous = settings
        .otp
        .get(destination)
        .map_err(|e| store_unavailable("codes cannot be kept now", &e))?;
    match send_code(db, settings, channel, destination, user, previous)? {
        Ok(()) => ok(202, json!({ "status": "sent", "expires_in": otp::TTL_MS / 1000 })),
        Err(wait) => Ok(retry_later(
            "rate_limited",
            format!("a code was just sent: retry in {wait} s"),
            wait,
        )),
    }
}

/// A proof of the address or phone: without `code`, send one; with it, prove.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofInput {
    code: Option<String>,
}

/// Proves the signed-in customer's address: without a code, one is mailed to it; with
/// it, the address is proven and nothing else changes. Whoever is signed in knows
/// the password, and whoever has the code reads the mailbox: both at once is the
/// owner, so the password and sessions stay (a code that comes back any other way,
/// an OTP login, ends them instead).
fn email_proof(body: &[u8], user_id: &str, db: &impl Sql, settings: &Settings<'_>) -> Result<Response, Refusal> {
    let input: ProofInput = accounts::parse(body)?;
    let user = user_by_id(db, user_id)?;
    if user.email_verified {
        return Err(refuse(409, "conflict", "this address is proven already"));
    }
    let Some(code) = input.code else {
        return send_proof_code(db, settings, "email", &user.email, &user);
    };
    let otp_input = OtpInput {
        email: Some(user.email.clone()),
        phone: None,
        code: Some(code),
    };
    check_code(&otp_input, db, settings)?;
    Store(db).mark_email_verified(&user.id).map_err(failed)?;
    ok(200, json!(user_by_id(db, user_id)?))
}

/// Proves the signed-in customer's phone: without a code, sends one to it (a few a
/// day per account: each costs an SMS); with the code, the phone is proven (and
/// taken from any other account that had proven it).
fn phone_proof(body: &[u8], user_id: &str, db: &impl Sql, settings: &Settings<'_>) -> Result<Response, Refusal> {
    let input: ProofInput = accounts::parse(body)?;
    let user = user_by_id(db, user_id)?;
    // (A phone kept before numbers were checked may be no number at all.)
    let phone = user
        .phone
        .as_deref()
        .and_then(|phone| accounts::normalize_phone(phone).ok())
        .ok_or_else(|| refuse(409, "no_phone", "set a phone number in your profile first"))?;
    if let Some(code) = input.code {
        let otp_input = OtpInput {
            email: None,
            phone: Some(phone.clone()),
            code: Some(code),
        };
        check_code(&otp_input, db, settings)?;
        if !Store(db).prove_phone(&user.id, &phone).map_err(failed)? {
            return Err(refuse(
                409,
                "conflict",
                "the phone changed meanwhile: ask for a new code",
            ));
        }
        return ok(200, json!(user_by_id(db, user_id)?));
    }
    if user.phone_verified {
        return Err(refuse(409, "conflict", "this phone is proven already"));
    }
    let now_ms = settings.now * 1000;
    let spent = count_with(
        settings.login_failures,
        &throttle::phone_codes_key(&user.id),
        |current| throttle::spend(current, throttle::PHONE_CODES_PER_DAY, throttle::DAY_MS, now_ms),
    );
    match spent {
        Ok(()) => send_proof_code(db, settings, "sms", &phone, &user),
        Err(Held::Wait(wait)) => Ok(retry_later(
            "rate_limited",
            format!(
                "{} codes a day go to a new phone: retry in {wait} s",
                throttle::PHONE_CODES_PER_DAY
            ),
            wait,
        )),
        Err(Held::StoreDown(e)) => Err(store_unavailable("codes cannot be kept now", &e)),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordReset {
    email: String,
    code: String,
    new_password: String,
}

/// A forgotten password: a code mailed to the address (`/auth/otp/request`) sets a new
/// one, proves the address, and ends every session.
fn password_reset(body: &[u8], db: &impl Sql, key: &SigningKey, settings: &Settings<'_>) -> Result<Response, Refusal> {
    let input: PasswordReset = accounts::parse(body)?;
    accounts::check_password(&input.new_password)?;
    let otp_input = OtpInput {
        email: Some(input.email),
        phone: None,
        code: Some(input.code),
    };
    let (_, user) = check_code(&otp_input, db, settings)?;
    let user = user.ok_or_else(|| refuse(401, "invalid_code", "the code is wrong"))?;
    end_sessions_of(db, settings, &user.id)?;
    let hash = accounts::hash_password(&input.new_password);
    let reset = Store(db).prove_email(&user.id, Some(&hash)).map_err(failed)?;
    tokens_after_proof(db, key, settings, &user.id, reset)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    current_password: Option<String>,
    new_password: String,
}

/// A signed-in customer's new password: the current one is needed if there is one
/// (guesses count as failed logins). Every session ends; the answer is a new one.
fn password_change(
    request: &Request<'_>,
    user_id: &str,
    db: &impl Sql,
    key: &SigningKey,
    settings: &Settings<'_>,
) -> Result<Response, Refusal> {
    let input: PasswordChange = accounts::parse(request.body)?;
    accounts::check_password(&input.new_password)?;
    let user = user_by_id(db, user_id)?;
    if user.has_password() {
        let counter = throttle::account_key(&user.email, request.client.unwrap_or("unknown"));
        match count_attempt(
            settings.login_failures,
            &counter,
            throttle::FREE_PER_ACCOUNT,
            settings.now * 1000,
        ) {
            Ok(()) => {}
            Err(Held::Wait(wait)) => {
                return Ok(retry_later(
                    "too_many_attempts",
                    format!("too many wrong passwords: retry in {wait} s"),
                    wait,
                ));
            }
            Err(Held::StoreDown(e)) => return Err(store_unavailable("attempts cannot be counted now", &e)),
        }
        let current = input.current_password.as_deref().unwrap_or_default();
        if !accounts::password_matches(current, &user.password_hash) {
            return Err(refuse(401, "invalid_credentials", "`current_password` is wrong"));
        }
        settings.login_failures.remove(&counter);
    }
    end_sessions_of(db, settings, &user.id)?;
    Store(db)
        .change_password(&user.id, &accounts::hash_password(&input.new_password))
        .map_err(failed)?;
    tokens(db, key, settings, &user, None)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::OnceLock;

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use shop_domain::sql::testing::MemoryDb;

    use super::*;

    fn key() -> &'static SigningKey {
        static KEY: OnceLock<SigningKey> = OnceLock::new();
        KEY.get_or_init(|| SigningKey::generate().unwrap().1)
    }

    /// Pending codes, per test thread (each test runs on its own thread).
    #[derive(Default)]
    struct MemOtp(std::cell::RefCell<std::collections::HashMap<String, Pending>>);

    impl OtpStore for MemOtp {
        fn get(&self, destination: &str) -> Result<Option<Pending>, String> {
            Ok(self.0.borrow().get(destination).cloned())
        }
        fn put(&self, destination: &str, pending: &Pending) -> Result<(), String> {
            self.0.borrow_mut().insert(destination.into(), pending.clone());
            Ok(())
        }
        fn remove(&self, destination: &str) {
            self.0.borrow_mut().remove(destination);
        }
        fn replace(&self, destination: &str, current: &Pending, next: &Pending) -> Result<bool, String> {
            let mut codes = self.0.borrow_mut();
            if codes.get(destination) != Some(current) {
                return Ok(false);
            }
            codes.insert(destination.into(), next.clone());
            Ok(true)
        }
    }

    thread_local!(static OTP: MemOtp = MemOtp::default());

    /// The codes handed to notifications, per test thread; `SENDER_DOWN` refuses them.
    #[derive(Default)]
    struct MemSender(std::cell::RefCell<Vec<shop_domain::types::OtpDelivery>>);

    impl OtpSender for MemSender {
        fn send(&self, delivery: &shop_domain::types::OtpDelivery) -> Result<(), String> {
            if SENDER_DOWN.with(Cell::get) {
                return Err("notifications did not answer".into());
            }
            self.0.borrow_mut().push(delivery.clone());
            Ok(())
        }
    }

    thread_local!(static SENT: MemSender = MemSender::default());
    thread_local!(static SENDER_DOWN: Cell<bool> = const { Cell::new(false) });
    thread_local!(static NOW: Cell<i64> = const { Cell::new(1_800_000_000) });
    thread_local!(static COUNTERS_DOWN: Cell<bool> = const { Cell::new(false) });

    /// Login-failure counters, per test thread.
    #[derive(Default)]
    struct MemCounters(std::cell::RefCell<std::collections::HashMap<String, Failures>>);

    impl FailureCounters for MemCounters {
        fn get(&self, key: &str) -> Option<Failures> {
            self.0.borrow().get(key).cloned()
        }
        fn replace(&self, key: &str, current: Option<&Failures>, next: &Failures) -> Result<bool, String> {
            if COUNTERS_DOWN.with(Cell::get) {
                return Err("connection refused".into());
            }
            let mut counters = self.0.borrow_mut();
            if counters.get(key) != current {
                return Ok(false);
            }
            counters.insert(key.into(), next.clone());
            Ok(true)
        }
        fn remove(&self, key: &str) {
            self.0.borrow_mut().remove(key);
        }
    }

    // Leaked once per test thread, so settings can borrow it for as long as they like.
    thread_local!(static FAILURES: &'static MemCounters = Box::leak(Box::default()));

    /// Ended sessions and until when, per test thread.
    #[derive(Default)]
    struct MemEnded(std::cell::RefCell<Vec<(String, i64)>>);

    impl EndedSessions for MemEnded {
        fn end(&self, session: &str, until: i64) -> Result<(), String> {
            self.0.borrow_mut().push((session.into(), until));
            Ok(())
        }
    }

    thread_local!(static ENDED: &'static MemEnded = Box::leak(Box::default()));

    fn ended_sessions() -> Vec<String> {
        ENDED.with(|e| e.0.borrow().iter().map(|(s, _)| s.clone()).collect())
    }

    /// The `sid` claim of an access token (its signature is the gateway's to check).
    fn session_of(access_token: &Value) -> String {
        let token = access_token.as_str().unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        claims["sid"].as_str().unwrap().to_string()
    }
    // The client address requests come from.
    thread_local!(static CLIENT: Cell<&'static str> = const { Cell::new("10.0.0.1") });

    fn call(db: &MemoryDb, method: &str, path: &str, body: Value, user: Option<&str>) -> (u16, Value) {
        OTP.with(|otp| SENT.with(|sender| call_with(db, otp, sender, method, path, body, user)))
    }

    fn call_with(
        db: &MemoryDb,
        otp: &dyn OtpStore,
        otp_sender: &MemSender,
        method: &str,
        path: &str,
        body: Value,
        user: Option<&str>,
    ) -> (u16, Value) {
        thread_local!(static IDS: Cell<u32> = const { Cell::new(0) });
        let new_id = || {
            IDS.with(|ids| ids.set(ids.get() + 1));
            uuid_like(IDS.with(Cell::get))
        };
        let settings = Settings {
            issuer: "https://auth.shop",
            audience: "shop",
            admin: Some(("root@shop.test", "admin-password")),
            now: NOW.with(Cell::get),
            now_text: "2027-01-15T08:00:00Z".into(),
            new_id: &new_id,
            otp,
            otp_sender,
            login_failures: FAILURES.with(|f| *f),
            ended_sessions: ENDED.with(|e| *e),
            service_clients: &ServiceClients::parse("notifications=notifications-secret-1").unwrap(),
        };
        let body = body.to_string();
        let request = Request {
            method,
            path,
            body: body.as_bytes(),
            user: user.map(|u| u.rsplit_once(':').map_or(u, |(id, _)| id)),
            // `id:role,role` in these tests.
            roles: user
                .and_then(|u| u.rsplit_once(':'))
                .map_or("customer", |(_, roles)| roles),
            client: Some(CLIENT.with(Cell::get)),
        };
        let response = handle(&request, db, key(), &settings);
        (response.status, response.body.unwrap_or(Value::Null))
    }

    fn uuid_like(n: u32) -> String {
        format!("{:08x}{}", n, std::process::id())
    }

    #[test]
    fn failed_logins_slow_their_client_down_but_never_the_owner_elsewhere() {
        let db = MemoryDb::default();
        let ada = json!({ "email": "ada@example.com", "password": "correct horse", "name": "Ada" });
        assert_eq!(call(&db, "POST", "/auth/register", ada, None).0, 201);
        let login = |password: &str| {
            call(
                &db,
                "POST",
                "/auth/login",
                json!({ "email": "ada@example.com", "password": password }),
                None,
            )
        };
        CLIENT.with(|c| c.set("203.0.113.9"));
        for _ in 0..throttle::FREE_PER_ACCOUNT {
            assert_eq!(login("wrong horse!").0, 401);
        }
        let (status, refused) = login("correct horse");
        assert_eq!(
            (status, refused["error"]["code"].as_str()),
            (429, Some("too_many_attempts")),
            "even the right password waits after 5 failures: {refused}"
        );
        CLIENT.with(|c| c.set("198.51.100.7"));
        assert_eq!(login("correct horse").0, 200, "the owner elsewhere is not held up");
        CLIENT.with(|c| c.set("203.0.113.9"));
        NOW.with(|n| n.set(n.get() + 2));
        assert_eq!(login("correct horse").0, 200, "the pause ends");
        assert_eq!(login("wrong horse!").0, 401, "and the success cleared the count");

        // One address trying many accounts is paused too.
        CLIENT.with(|c| c.set("192.0.2.50"));
        for i in 0..throttle::FREE_PER_CLIENT {
            let guess = json!({ "email": format!("user{i}@example.com"), "password": "guess-guess" });
            assert_eq!(call(&db, "POST", "/auth/login", guess, None).0, 401);
        }
        assert_eq!(login("correct horse").0, 429, "the address is paused across accounts");
        CLIENT.with(|c| c.set("10.0.0.1"));
    }

    /// A login for an address without an account leaves no counter of its own behind
    /// (only the client's counts on): key-value does not fill with every address tried.
    #[test]
    fn logins_for_unknown_addresses_leave_no_counters_behind() {
        let db = MemoryDb::default();
        CLIENT.with(|c| c.set("198.51.100.77"));
        for i in 0..3 {
            assert_eq!(
                password_login(&db, &format!("ghost{i}@example.com"), "whatever-1").0,
                401
            );
        }
        CLIENT.with(|c| c.set("10.0.0.1"));
        let keys: Vec<String> = FAILURES.with(|f| f.0.borrow().keys().cloned().collect());
        assert!(
            keys.iter().all(|k| !k.contains("ghost")),
            "counters of unknown addresses: {keys:?}"
        );
        assert!(keys.contains(&throttle::client_key("198.51.100.77")), "{keys:?}");
    }

    /// Guessing one account's password from many addresses adds up: past 20 wrong
    /// passwords in all, its password logins wait; a mailed code still signs in.
    #[test]
    fn guesses_from_many_addresses_add_up_per_account() {
        let db = MemoryDb::default();
        register(&db, "ada@example.com", "correct horse");
        let mut statuses = Vec::new();
        for i in 0..40 {
            let address: &'static str = Box::leak(format!("203.0.113.{i}").into_boxed_str());
            CLIENT.with(|c| c.set(address));
            statuses.push(password_login(&db, "ada@example.com", "wrong horse!").0);
        }
        CLIENT.with(|c| c.set("10.0.0.1"));
        let refused = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!(
            statuses.iter().filter(|s| **s == 401).count(),
            throttle::FREE_PER_ACCOUNT_EVERYWHERE as usize
        );
        assert_eq!(
            refused,
            40 - throttle::FREE_PER_ACCOUNT_EVERYWHERE as usize,
            "{statuses:?}"
        );
        assert_eq!(otp_login(&db, "ada@example.com").0, 200, "a code still signs in");
    }

    #[test]
    fn a_login_whose_attempts_cannot_be_counted_is_503_not_a_pass_or_a_pause() {
        let db = MemoryDb::default();
        let ada = json!({ "email": "ada@example.com", "password": "correct horse", "name": "Ada" });
        assert_eq!(call(&db, "POST", "/auth/register", ada, None).0, 201);
        let login = json!({ "email": "ada@example.com", "password": "correct horse" });
        COUNTERS_DOWN.with(|d| d.set(true));
        let (status, body) = call(&db, "POST", "/auth/login", login.clone(), None);
        COUNTERS_DOWN.with(|d| d.set(false));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("unavailable")),
            "{body}"
        );
        assert_eq!(
            call(&db, "POST", "/auth/login", login, None).0,
            200,
            "and works again after"
        );
    }

    #[test]
    fn a_reused_refresh_token_revokes_its_whole_family_and_only_it() {
        let db = MemoryDb::default();
        let ada = json!({ "email": "ada@example.com", "password": "correct horse", "name": "Ada" });
        assert_eq!(call(&db, "POST", "/auth/register", ada, None).0, 201);
        let login = json!({ "email": "ada@example.com", "password": "correct horse" });
        let (_, phone) = call(&db, "POST", "/auth/login", login.clone(), None);
        let (_, laptop) = call(&db, "POST", "/auth/login", login, None);
        let refresh = |token: &Value| call(&db, "POST", "/auth/refresh", json!({ "refresh_token": token }), None);

        let (status, rotated) = refresh(&phone["refresh_token"]);
        assert_eq!(status, 200);
        let (status, stolen) = refresh(&phone["refresh_token"]);
        assert_eq!((status, stolen["error"]["code"].as_str()), (401, Some("token_reused")));
        assert_eq!(
            refresh(&rotated["refresh_token"]).0,
            401,
            "the successor of a reused token is revoked too"
        );
        assert_eq!(refresh(&laptop["refresh_token"]).0, 200, "another login is untouched");
        assert_eq!(refresh(&json!("never-issued")).0, 401);
        let ended = ended_sessions();
        assert!(
            ended.contains(&session_of(&phone["access_token"])),
            "the reused login's access tokens end"
        );
        assert!(!ended.contains(&session_of(&laptop["access_token"])));
    }

    #[test]
    fn register_login_refresh_logout_and_profile() {
        let db = MemoryDb::default();
        let ada = json!({ "email": "Ada@Example.com", "password": "correct horse", "name": "Ada" });
        let (status, user) = call(&db, "POST", "/auth/register", ada.clone(), None);
        assert_eq!(status, 201, "{user}");
        assert_eq!(
            (user["email"].as_str(), user["roles"].clone()),
            (Some("ada@example.com"), json!(["customer"]))
        );
        assert!(user.get("password_hash").is_none(), "hashes never leave the service");
        assert_eq!(call(&db, "POST", "/auth/register", ada, None).0, 409);

        let login = json!({ "email": "ada@example.com", "password": "correct horse" });
        let (status, tokens) = call(&db, "POST", "/auth/login", login, None);
        assert_eq!((status, tokens["token_type"].as_str()), (200, Some("Bearer")));
        let wrong = json!({ "email": "ada@example.com", "password": "wrong horse!" });
        assert_eq!(call(&db, "POST", "/auth/login", wrong, None).0, 401);
        let nobody = json!({ "email": "nobody@example.com", "password": "whatever1" });
        assert_eq!(call(&db, "POST", "/auth/login", nobody, None).0, 401);

        let refresh = json!({ "refresh_token": tokens["refresh_token"] });
        let (status, rotated) = call(&db, "POST", "/auth/refresh", refresh.clone(), None);
        assert_eq!(status, 200);
        assert_ne!(rotated["refresh_token"], tokens["refresh_token"], "rotated");
        assert_eq!(call(&db, "POST", "/auth/refresh", refresh, None).0, 401, "single use");
        let rotated_refresh = json!({ "refresh_token": rotated["refresh_token"] });
        let session = session_of(&tokens["access_token"]);
        assert_eq!(session, session_of(&rotated["access_token"]), "one login, one session");
        assert!(
            ended_sessions().contains(&session),
            "the refresh token used twice ended its session for the gateway"
        );
        assert_eq!(call(&db, "POST", "/auth/logout", rotated_refresh.clone(), None).0, 204);
        let login = json!({ "email": "ada@example.com", "password": "correct horse" });
        let (_, again) = call(&db, "POST", "/auth/login", login, None);
        let second = session_of(&again["access_token"]);
        assert_ne!(second, session);
        assert!(!ended_sessions().contains(&second));
        let again_refresh = json!({ "refresh_token": again["refresh_token"] });
        assert_eq!(call(&db, "POST", "/auth/logout", again_refresh, None).0, 204);
        assert!(
            ended_sessions().contains(&second),
            "logout ends the session for the gateway"
        );
        assert_eq!(
            call(&db, "POST", "/auth/refresh", rotated_refresh, None).0,
            401,
            "revoked"
        );

        let id = user["id"].as_str().unwrap();
        assert_eq!(call(&db, "GET", "/users/me", Value::Null, None).0, 401);
        let (status, me) = call(
            &db,
            "PATCH",
            "/users/me",
            json!({ "name": "Ada L.", "phone": "+4412345" }),
            Some(id),
        );
        assert_eq!(
            (status, me["name"].as_str(), me["phone"].as_str()),
            (200, Some("Ada L."), Some("+4412345"))
        );
        assert_eq!(
            call(&db, "PATCH", "/users/me", json!({ "role": "admin" }), Some(id)).0,
            400
        );
        for not_an_object in [json!([null, null]), json!(["Eve", "+1"]), json!("x"), json!(7)] {
            let (status, answer) = call(&db, "PATCH", "/users/me", not_an_object.clone(), Some(id));
            assert_eq!(
                (status, answer["error"]["code"].as_str()),
                (400, Some("validation_failed")),
                "{not_an_object}"
            );
        }

        let events = shop_domain::outbox::read_all(&db).unwrap();
        assert!(matches!(&events[..], [shop_domain::ShopEvent::UserRegistered(e)] if e.user_id == id));
    }

    /// The last code as notifications got it, checking it went nowhere else: not into
    /// the outbox (the `otp_requested` event there carries no code) nor the database.
    fn last_code(db: &MemoryDb) -> String {
        let delivery = SENT
            .with(|sent| sent.0.borrow().last().cloned())
            .expect("a code handed to notifications");
        let events = shop_domain::outbox::read_all(db).unwrap();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, shop_domain::ShopEvent::OtpRequested(o)
                if o.destination == delivery.destination && o.expires_at == delivery.expires_at)),
            "the otp_requested event is published"
        );
        let stored = db.dump();
        assert!(
            !stored.contains(&format!("\"{}\"", delivery.code)) && !stored.contains(&format!("'{}'", delivery.code)),
            "the code {} is stored: {stored}",
            delivery.code
        );
        delivery.code
    }

    fn register(db: &MemoryDb, email: &str, password: &str) -> Value {
        let (status, user) = call(
            db,
            "POST",
            "/auth/register",
            json!({ "email": email, "password": password, "name": "Someone" }),
            None,
        );
        assert_eq!(status, 201, "{user}");
        user
    }

    fn password_login(db: &MemoryDb, email: &str, password: &str) -> (u16, Value) {
        call(
            db,
            "POST",
            "/auth/login",
            json!({ "email": email, "password": password }),
            None,
        )
    }

    /// A code mailed to `email` (the resend pause is skipped), then verified.
    fn otp_login(db: &MemoryDb, email: &str) -> (u16, Value) {
        NOW.with(|n| n.set(n.get() + otp::RESEND_AFTER_MS / 1000));
        assert_eq!(
            call(db, "POST", "/auth/otp/request", json!({ "email": email }), None).0,
            202
        );
        let code = last_code(db);
        call(
            db,
            "POST",
            "/auth/otp/verify",
            json!({ "email": email, "code": code }),
            None,
        )
    }

    /// Pre-hijacking: a stranger registers the victim's address with his password and
    /// signs in. The victim proves the address with a mailed code: the stranger's
    /// password, phone and sessions end there; the victim's account is hers alone.
    #[test]
    fn the_first_proof_of_an_address_ends_what_a_stranger_set_before_it() {
        let db = MemoryDb::default();
        let squatted = register(&db, "victim@example.com", "attacker-pass");
        assert_eq!(squatted["email_verified"], false);
        let id = squatted["id"].as_str().unwrap();
        let (status, attacker) = password_login(&db, "victim@example.com", "attacker-pass");
        assert_eq!(status, 200);
        call(&db, "PATCH", "/users/me", json!({ "phone": "+15550001" }), Some(id));
        // The victim cannot register (the address is taken) and signs in by code.
        let (status, _) = call(
            &db,
            "POST",
            "/auth/register",
            json!({ "email": "victim@example.com", "password": "victim-pass", "name": "Victim" }),
            None,
        );
        assert_eq!(status, 409);
        let (status, victim) = otp_login(&db, "victim@example.com");
        assert_eq!(
            (status, victim["credentials_reset"].as_bool()),
            (200, Some(true)),
            "{victim}"
        );

        assert_eq!(password_login(&db, "victim@example.com", "attacker-pass").0, 401);
        assert!(ended_sessions().contains(&session_of(&attacker["access_token"])));
        let refresh = json!({ "refresh_token": attacker["refresh_token"] });
        assert_eq!(call(&db, "POST", "/auth/refresh", refresh, None).0, 401);
        let (_, me) = call(&db, "GET", "/users/me", Value::Null, Some(id));
        assert_eq!(
            (me["email_verified"].as_bool(), me["phone"].clone()),
            (Some(true), Value::Null)
        );
        assert!(!ended_sessions().contains(&session_of(&victim["access_token"])));

        // Later proofs change nothing: the victim's own password stays.
        let new = json!({ "new_password": "victim-pass" });
        assert_eq!(call(&db, "POST", "/users/me/password", new, Some(id)).0, 200);
        let (status, again) = otp_login(&db, "victim@example.com");
        assert_eq!((status, again["credentials_reset"].as_bool()), (200, Some(false)));
        assert_eq!(password_login(&db, "victim@example.com", "victim-pass").0, 200);
    }

    /// A registrant who proves the address while signed in keeps the password and
    /// the session: both together can only be the owner.
    #[test]
    fn proving_the_address_while_signed_in_keeps_the_password() {
        let db = MemoryDb::default();
        let id = register(&db, "ada@example.com", "correct horse")["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (_, session) = password_login(&db, "ada@example.com", "correct horse");
        let prove = |body: Value| call(&db, "POST", "/users/me/email/verify", body, Some(&id));
        assert_eq!(prove(json!({})).0, 202);
        let code = last_code(&db);
        let wrong = if code == "000000" { "000001" } else { "000000" };
        assert_eq!(prove(json!({ "code": wrong })).0, 401);
        let (status, me) = prove(json!({ "code": code }));
        assert_eq!((status, me["email_verified"].as_bool()), (200, Some(true)), "{me}");
        assert_eq!(prove(json!({})).0, 409, "proven already");
        assert_eq!(password_login(&db, "ada@example.com", "correct horse").0, 200);
        assert!(!ended_sessions().contains(&session_of(&session["access_token"])));
        let (status, again) = otp_login(&db, "ada@example.com");
        assert_eq!((status, again["credentials_reset"].as_bool()), (200, Some(false)));
    }

    #[test]
    fn a_password_changes_with_the_current_one_and_every_session_ends() {
        let db = MemoryDb::default();
        let user = register(&db, "ada@example.com", "correct horse");
        let id = user["id"].as_str().unwrap();
        let (_, laptop) = password_login(&db, "ada@example.com", "correct horse");
        let change = |body: Value| call(&db, "POST", "/users/me/password", body, Some(id));

        let (status, error) = change(json!({ "new_password": "battery staple" }));
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (401, Some("invalid_credentials"))
        );
        let wrong = json!({ "current_password": "wrong horse", "new_password": "battery staple" });
        assert_eq!(change(wrong).0, 401);
        assert_eq!(
            change(json!({ "current_password": "correct horse", "new_password": "short" })).0,
            400
        );
        let right = json!({ "current_password": "correct horse", "new_password": "battery staple" });
        let (status, tokens) = change(right);
        assert_eq!(status, 200, "{tokens}");
        assert!(tokens["access_token"].is_string());

        assert_eq!(password_login(&db, "ada@example.com", "correct horse").0, 401);
        assert_eq!(password_login(&db, "ada@example.com", "battery staple").0, 200);
        assert!(ended_sessions().contains(&session_of(&laptop["access_token"])));
        let refresh = json!({ "refresh_token": laptop["refresh_token"] });
        assert_eq!(call(&db, "POST", "/auth/refresh", refresh, None).0, 401);
        assert!(!ended_sessions().contains(&session_of(&tokens["access_token"])));
        assert_eq!(call(&db, "GET", "/users/me/password", Value::Null, Some(id)).0, 405);
    }

    #[test]
    fn a_forgotten_password_is_reset_with_a_mailed_code() {
        let db = MemoryDb::default();
        let user = register(&db, "ada@example.com", "correct horse");
        let (_, old) = password_login(&db, "ada@example.com", "correct horse");
        NOW.with(|n| n.set(n.get() + otp::RESEND_AFTER_MS / 1000));
        assert_eq!(
            call(
                &db,
                "POST",
                "/auth/otp/request",
                json!({ "email": "ada@example.com" }),
                None
            )
            .0,
            202
        );
        let code = last_code(&db);
        let wrong_code = if code == "000000" { "000001" } else { "000000" };
        let reset = |code: &str, password: &str| {
            call(
                &db,
                "POST",
                "/auth/password/reset",
                json!({ "email": "ada@example.com", "code": code, "new_password": password }),
                None,
            )
        };
        assert_eq!(reset(wrong_code, "battery staple").0, 401);
        assert_eq!(reset(&code, "short").0, 400, "checked before the code is spent");
        let (status, tokens) = reset(&code, "battery staple");
        assert_eq!(
            (status, tokens["credentials_reset"].as_bool()),
            (200, Some(true)),
            "{tokens}"
        );
        assert_eq!(reset(&code, "another one!").0, 401, "a code works once");
        assert_eq!(password_login(&db, "ada@example.com", "correct horse").0, 401);
        assert_eq!(password_login(&db, "ada@example.com", "battery staple").0, 200);
        assert!(ended_sessions().contains(&session_of(&old["access_token"])));
        let (_, me) = call(&db, "GET", "/users/me", Value::Null, user["id"].as_str());
        assert_eq!(me["email_verified"], true);
    }

    /// A new code every 30 s does not buy 5 new guesses each time: wrong codes count
    /// per address across codes, and past 10 each guess waits, longer each time.
    #[test]
    fn wrong_codes_count_across_codes() {
        let db = MemoryDb::default();
        register(&db, "ada@example.com", "correct horse");
        let mut refused_at = None;
        for round in 0..4 {
            NOW.with(|n| n.set(n.get() + otp::RESEND_AFTER_MS / 1000));
            call(
                &db,
                "POST",
                "/auth/otp/request",
                json!({ "email": "ada@example.com" }),
                None,
            );
            let code = last_code(&db);
            let wrong = if code == "000000" { "000001" } else { "000000" };
            for guess in 0..otp::MAX_ATTEMPTS {
                let body = json!({ "email": "ada@example.com", "code": wrong });
                let (status, error) = call(&db, "POST", "/auth/otp/verify", body, None);
                if status == 429 && error["error"]["message"].as_str().unwrap().contains("this address") {
                    refused_at.get_or_insert((round, guess));
                }
            }
        }
        // Ten wrong codes are free; then each waits 1 s, 2 s, 4 s… after the one
        // before (up to 15 minutes): the third code, 30 s later, gets one guess, and
        // the next is refused at once.
        assert_eq!(refused_at, Some((2, 1)));
        // Later, the right code signs in and clears the count.
        NOW.with(|n| n.set(n.get() + 3600));
        let (status, _) = otp_login(&db, "ada@example.com");
        assert_eq!(status, 200);
    }

    /// The SMS code last handed to notifications for `phone`.
    fn last_sms_code(phone: &str) -> String {
        SENT.with(|sent| {
            sent.0
                .borrow()
                .iter()
                .rev()
                .find(|d| d.destination == phone && d.channel == "sms")
                .map(|d| d.code.clone())
                .expect("an SMS code")
        })
    }

    /// A phone signs in by SMS only once a code sent to it came back; a stranger who
    /// types the victim's number into his own profile gains nothing, and when the
    /// victim proves it, the number leaves his account.
    #[test]
    fn only_a_proven_phone_signs_in_and_it_belongs_to_one_account() {
        let db = MemoryDb::default();
        let victim = register(&db, "victim@example.com", "victim-pass")["id"]
            .as_str()
            .unwrap()
            .to_string();
        let stranger = register(&db, "stranger@example.com", "stranger-pass")["id"]
            .as_str()
            .unwrap()
            .to_string();
        let phone = "+15550123";
        let set_phone = |id: &str| call(&db, "PATCH", "/users/me", json!({ "phone": phone }), Some(id));
        let prove = |id: &str, body: Value| call(&db, "POST", "/users/me/phone/verify", body, Some(id));

        assert_eq!(set_phone(&stranger).0, 200);
        let sent = SENT.with(|sent| sent.0.borrow().len());
        let (status, _) = call(&db, "POST", "/auth/otp/request", json!({ "phone": phone }), None);
        assert_eq!(status, 202);
        assert_eq!(
            SENT.with(|sent| sent.0.borrow().len()),
            sent,
            "no code for an unproven phone"
        );

        assert_eq!(set_phone(&victim).0, 200);
        assert_eq!(prove(&victim, json!({})).0, 202);
        let code = last_sms_code(phone);
        let wrong = if code == "000000" { "000001" } else { "000000" };
        assert_eq!(prove(&victim, json!({ "code": wrong })).0, 401);
        let (status, me) = prove(&victim, json!({ "code": code }));
        assert_eq!((status, me["phone_verified"].as_bool()), (200, Some(true)), "{me}");
        let (_, his) = call(&db, "GET", "/users/me", Value::Null, Some(&stranger));
        assert_eq!(his["phone"], Value::Null, "the number left the stranger's account");
        assert_eq!(prove(&victim, json!({})).0, 409, "proven already");

        // An SMS login now signs in to the victim's account.
        NOW.with(|n| n.set(n.get() + otp::RESEND_AFTER_MS / 1000));
        assert_eq!(
            call(&db, "POST", "/auth/otp/request", json!({ "phone": phone }), None).0,
            202
        );
        let code = last_sms_code(phone);
        let (status, tokens) = call(
            &db,
            "POST",
            "/auth/otp/verify",
            json!({ "phone": phone, "code": code }),
            None,
        );
        assert_eq!(status, 200);
        let sub = {
            let token = tokens["access_token"].as_str().unwrap();
            let claims: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
            claims["sub"].as_str().unwrap().to_string()
        };
        assert_eq!(sub, victim);

        // A new number is unproven again.
        let (_, me) = call(
            &db,
            "PATCH",
            "/users/me",
            json!({ "phone": "+15550999" }),
            Some(&victim),
        );
        assert_eq!(me["phone_verified"], false);
    }

    /// Codes to a new phone cost an SMS each: a customer changing numbers in a loop gets
    /// five a day.
    #[test]
    fn codes_to_new_phones_are_a_few_a_day() {
        let db = MemoryDb::default();
        let id = register(&db, "pump@example.com", "pump-pass")["id"]
            .as_str()
            .unwrap()
            .to_string();
        let mut statuses = Vec::new();
        for i in 0..8 {
            call(
                &db,
                "PATCH",
                "/users/me",
                json!({ "phone": format!("+1555000{i:03}") }),
                Some(&id),
            );
            statuses.push(call(&db, "POST", "/users/me/phone/verify", json!({}), Some(&id)).0);
        }
        assert_eq!(statuses, [202, 202, 202, 202, 202, 429, 429, 429]);
        NOW.with(|n| n.set(n.get() + throttle::DAY_MS / 1000));
        assert_eq!(
            call(&db, "POST", "/users/me/phone/verify", json!({}), Some(&id)).0,
            202,
            "the next day"
        );
    }

    #[test]
    fn the_admin_address_cannot_be_registered_before_the_admin_logs_in() {
        let db = MemoryDb::default();
        let squat = json!({ "email": "Root@Shop.Test", "password": "squatter-pass", "name": "Eve" });
        assert_eq!(call(&db, "POST", "/auth/register", squat, None).0, 409);
        let (status, _) = password_login(&db, "root@shop.test", "admin-password");
        assert_eq!(status, 200, "the admin's first login makes the account");
    }

    #[test]
    fn a_code_that_cannot_be_sent_is_a_503_and_not_throttled() {
        let db = MemoryDb::default();
        let ada = json!({ "email": "ada@example.com", "password": "correct horse", "name": "Ada" });
        assert_eq!(call(&db, "POST", "/auth/register", ada, None).0, 201);
        let request = json!({ "email": "ada@example.com" });
        SENDER_DOWN.with(|down| down.set(true));
        let (status, error) = call(&db, "POST", "/auth/otp/request", request.clone(), None);
        SENDER_DOWN.with(|down| down.set(false));
        assert_eq!((status, error["error"]["code"].as_str()), (503, Some("unavailable")));
        let events = shop_domain::outbox::read_all(&db).unwrap();
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, shop_domain::ShopEvent::OtpRequested(_)))
        );
        assert_eq!(
            call(&db, "POST", "/auth/otp/request", request, None).0,
            202,
            "asking again right away works"
        );
        last_code(&db);
    }

    /// A store in which another request's wrong guess lands between this request's
    /// read and its write, once.
    struct Interleaved<'a> {
        inner: &'a MemOtp,
        other_guess: Cell<bool>,
    }

    impl OtpStore for Interleaved<'_> {
        fn get(&self, destination: &str) -> Result<Option<Pending>, String> {
            self.inner.get(destination)
        }
        fn put(&self, destination: &str, pending: &Pending) -> Result<(), String> {
            self.inner.put(destination, pending)
        }
        fn remove(&self, destination: &str) {
            self.inner.remove(destination)
        }
        fn replace(&self, destination: &str, current: &Pending, next: &Pending) -> Result<bool, String> {
            if self.other_guess.take() {
                let mut raced = self.inner.get(destination).unwrap().unwrap();
                raced.attempts += 1;
                self.inner.put(destination, &raced).unwrap();
            }
            self.inner.replace(destination, current, next)
        }
    }

    #[test]
    fn parallel_guesses_are_each_counted_and_a_code_works_once() {
        let db = MemoryDb::default();
        let ada = json!({ "email": "ada@example.com", "password": "correct horse", "name": "Ada" });
        assert_eq!(call(&db, "POST", "/auth/register", ada, None).0, 201);
        let request = json!({ "email": "ada@example.com" });
        assert_eq!(call(&db, "POST", "/auth/otp/request", request, None).0, 202);
        let code = last_code(&db);
        let wrong = if code == "000000" { "000001" } else { "000000" };
        let guess = |code: &str, raced: bool| {
            OTP.with(|otp| {
                SENT.with(|sender| {
                    let store = Interleaved {
                        inner: otp,
                        other_guess: Cell::new(raced),
                    };
                    let body = json!({ "email": "ada@example.com", "code": code });
                    call_with(&db, &store, sender, "POST", "/auth/otp/verify", body, None)
                })
            })
        };
        let (status, answer) = guess(wrong, true);
        assert_eq!(status, 401);
        assert_eq!(
            answer["error"]["message"], "the code is wrong (3 attempts left)",
            "the guess that landed first is counted too"
        );
        for _ in 0..2 {
            guess(wrong, false);
        }
        // One attempt left; two guesses at once: only one is evaluated.
        let (status, answer) = guess(wrong, true);
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (429, Some("too_many_attempts"))
        );
        assert_eq!(guess(&code, false).0, 429, "locked");

        // A new code logs in, once.
        NOW.with(|n| n.set(n.get() + 31));
        let request = json!({ "email": "ada@example.com" });
        assert_eq!(call(&db, "POST", "/auth/otp/request", request, None).0, 202);
        let code = last_code(&db);
        assert_eq!(guess(&code, false).0, 200);
        assert_eq!(guess(&code, false).0, 401, "used");
    }

    #[test]
    fn otp_login_with_attempt_limits_throttling_and_expiry() {
        let db = MemoryDb::default();
        let ada = json!({ "email": "ada@example.com", "password": "correct horse", "name": "Ada" });
        assert_eq!(call(&db, "POST", "/auth/register", ada, None).0, 201);
        let request = json!({ "email": "ADA@example.com" });
        assert_eq!(call(&db, "POST", "/auth/otp/request", request.clone(), None).0, 202);
        let code = last_code(&db);
        let sent = SENT.with(|sent| sent.0.borrow().len());
        let (status, _) = call(&db, "POST", "/auth/otp/request", request.clone(), None);
        assert_eq!(status, 202, "a resend answers as an unknown address does");
        assert_eq!(SENT.with(|sent| sent.0.borrow().len()), sent, "but sends nothing new");
        let (status, _) = call(
            &db,
            "POST",
            "/auth/otp/request",
            json!({ "email": "nobody@example.com" }),
            None,
        );
        assert_eq!(status, 202, "unknown addresses look the same");

        let wrong = if code == "000000" { "000001" } else { "000000" };
        let verify = |code: &str| {
            call(
                &db,
                "POST",
                "/auth/otp/verify",
                json!({ "email": "ada@example.com", "code": code }),
                None,
            )
        };
        for _ in 0..4 {
            assert_eq!(verify(wrong).1["error"]["code"], "invalid_code");
        }
        assert_eq!(verify(wrong).0, 429, "the fifth miss locks");
        assert_eq!(verify(&code).0, 429, "locked even for the right code");

        // A new code (after the resend pause) logs in, once.
        NOW.with(|n| n.set(n.get() + 31));
        assert_eq!(call(&db, "POST", "/auth/otp/request", request.clone(), None).0, 202);
        let code = last_code(&db);
        let (status, tokens) = verify(&code);
        assert_eq!((status, tokens["token_type"].as_str()), (200, Some("Bearer")));
        assert_eq!(verify(&code).0, 401, "a code works once");

        // An expired code is refused.
        NOW.with(|n| n.set(n.get() + 31));
        assert_eq!(call(&db, "POST", "/auth/otp/request", request, None).0, 202);
        let code = last_code(&db);
        NOW.with(|n| n.set(n.get() + 301));
        assert_eq!(verify(&code).1["error"]["code"], "code_expired");
        assert_eq!(
            call(
                &db,
                "POST",
                "/auth/otp/verify",
                json!({ "email": "ada@example.com", "code": "12" }),
                None
            )
            .0,
            400
        );
    }

    #[test]
    fn the_admin_is_seeded_on_first_login_and_jwks_is_public() {
        let db = MemoryDb::default();
        let wrong = json!({ "email": "root@shop.test", "password": "guess-guess" });
        assert_eq!(
            call(&db, "POST", "/auth/login", wrong, None).0,
            401,
            "only with the configured password"
        );
        let login = json!({ "email": "root@shop.test", "password": "admin-password" });
        assert_eq!(call(&db, "POST", "/auth/login", login.clone(), None).0, 200);
        assert_eq!(
            call(&db, "POST", "/auth/login", login, None).0,
            200,
            "seeded once, then a normal login"
        );
        let (status, jwks) = call(&db, "GET", "/.well-known/jwks.json", Value::Null, None);
        assert_eq!(
            (status, jwks["keys"][0]["kid"].as_str()),
            (200, Some(key().kid.as_str()))
        );
        for (method, path, status) in [("GET", "/auth/login", 405), ("GET", "/nope", 404)] {
            assert_eq!(call(&db, method, path, Value::Null, None).0, status, "{method} {path}");
        }
        let bad = call(
            &db,
            "POST",
            "/auth/register",
            json!({ "email": "x", "password": "p", "name": "n" }),
            None,
        );
        assert_eq!(bad.0, 400);
    }

    #[test]
    fn services_get_short_lived_tokens_and_may_read_users() {
        use jsonwebtoken::{DecodingKey, Validation, decode};
        let db = MemoryDb::default();
        let credentials = |secret: &str| json!({ "client_id": "notifications", "client_secret": secret });
        let (status, body) = call(
            &db,
            "POST",
            "/auth/service-token",
            credentials("wrong-secret-000"),
            None,
        );
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_client")));
        let extra = json!({ "client_id": "notifications", "client_secret": "x", "scope": "all" });
        assert_eq!(call(&db, "POST", "/auth/service-token", extra, None).0, 400);

        let (status, issued) = call(
            &db,
            "POST",
            "/auth/service-token",
            credentials("notifications-secret-1"),
            None,
        );
        assert_eq!(
            (status, issued["expires_in"].as_i64()),
            (200, Some(SERVICE_TTL_SECS)),
            "{issued}"
        );
        let jwk: jsonwebtoken::jwk::JwkSet = serde_json::from_value(key().jwks()).unwrap();
        let mut validation = Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&["shop"]);
        validation.validate_exp = false;
        let claims = decode::<Value>(
            issued["access_token"].as_str().unwrap(),
            &DecodingKey::from_jwk(&jwk.keys[0]).unwrap(),
            &validation,
        )
        .unwrap()
        .claims;
        assert_eq!(claims["sub"], "service:notifications");
        assert_eq!(claims["roles"], json!(["service"]));
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 300);

        let ada = json!({ "email": "ada@example.com", "password": "correct horse", "name": "Ada" });
        let (_, registered) = call(&db, "POST", "/auth/register", ada, None);
        let path = format!("/users/{}", registered["id"].as_str().unwrap());
        let (status, user) = call(&db, "GET", &path, Value::Null, Some("service:notifications:service"));
        assert_eq!((status, user["email"].as_str()), (200, Some("ada@example.com")));
        assert!(user.get("password_hash").is_none());
        let (status, _) = call(&db, "GET", &path, Value::Null, Some("someone:customer"));
        assert_eq!(status, 403, "customers may not read other users");
        let (status, _) = call(&db, "GET", "/users/nobody", Value::Null, Some("svc:service"));
        assert_eq!(status, 404);
        assert_eq!(call(&db, "DELETE", &path, Value::Null, Some("svc:service")).0, 405);
    }
}
