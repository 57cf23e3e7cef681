//! Notifications' API as a Spin HTTP component: `GET /notifications` for the caller,
//! and `POST /deliveries/otp`, where the users service hands over a login code to send
//! (over local service chaining; the gateway does not route it).

#![cfg(target_arch = "wasm32")]

use notifications::channels::HttpChannels;
use notifications::records::Records;
use shop_domain::api::{ApiError, Response as ApiResponse};
use shop_domain::sql::spin::SpinDatabase;
use shop_domain::types::OtpDelivery;
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

const DATABASE: &str = "notifications";

fn records(db: &SpinDatabase) -> Records<'_, SpinDatabase> {
    Records::at(db, guest_kit::now_secs(), &guest_kit::new_id)
}

/// Sends one login code: 202 once a channel took it.
fn deliver_otp(req: &Request) -> Result<ApiResponse, ApiError> {
    if *req.method() != Method::Post {
        return Err(ApiError::method_not_allowed("POST"));
    }
    let delivery: OtpDelivery = ApiError::parse(req.body())?;
    if !matches!(delivery.channel.as_str(), "email" | "sms")
        || delivery.destination.trim().is_empty()
        || delivery.code.len() != 6
        || !delivery.code.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(ApiError::bad_request(
            "validation_failed",
            "a channel (`email` or `sms`), a destination and a 6-digit code are required",
        ));
    }
    let db = SpinDatabase::open_configured(DATABASE).map_err(ApiError::unavailable)?;
    let records = records(&db);
    records.migrate()?;
    let channel = records
        .deliver_otp(&delivery, &HttpChannels::configured())
        .map_err(|e| ApiError::unavailable(format!("the code was not sent: {e}")))?;
    Ok(ApiResponse::json(
        202,
        &serde_json::json!({ "status": "sent", "channel": channel }),
    ))
}

fn list(req: &Request) -> Result<ApiResponse, ApiError> {
    if *req.method() != Method::Get {
        return Err(ApiError::method_not_allowed("GET"));
    }
    let user = guest_kit::header(req, "x-shop-user");
    if user.is_empty() {
        return Err(ApiError::new(401, "unauthorized", "no authenticated user"));
    }
    let db = SpinDatabase::open_configured(DATABASE).map_err(ApiError::unavailable)?;
    let records = records(&db);
    records.migrate()?;
    let items = records.of_user(user, 100)?;
    Ok(ApiResponse::json(200, &serde_json::json!({ "items": items })))
}

#[http_component]
fn handle_http(req: Request) -> Response {
    let result = match req.path().trim_end_matches('/') {
        "/notifications" => list(&req),
        "/deliveries/otp" => deliver_otp(&req),
        path => Err(ApiError::not_found(format!("no route for {path}"))),
    };
    guest_kit::reply(ApiResponse::from_result(result))
}
