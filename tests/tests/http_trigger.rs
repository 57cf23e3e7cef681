//! The HTTP trigger end to end: real `shop up`, real components, real HTTP on loopback.

use serde_json::Value;
use shop_tests::*;

fn get_json(url: &str) -> (u16, Value) {
    let r = client().get(url).send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"));
    (status, json)
}

fn header<'a>(echo: &'a Value, name: &str) -> &'a str {
    echo["headers"][name]
        .as_str()
        .unwrap_or_else(|| panic!("header {name} missing in {echo}"))
}

#[test]
fn p2_and_p3_components_answer_side_by_side() {
    let dir = TempDir::new("worlds");
    let manifest = dir.manifest(&format!(
        "{}{}{}{}{}{}",
        http_trigger("/hello", "hello"),
        http_trigger("/p2/...", "echo-p2"),
        http_trigger("/p3/...", "echo-p3"),
        component("hello", "p2-hello", ""),
        component("echo-p2", "p2-echo", ""),
        component("echo-p3", "p3-echo", ""),
    ));
    let shop = Shop::start(&manifest, &dir.path().join("data"));

    let r = client().get(format!("{}/hello", shop.base)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "hello from p2");

    let r = client().get(format!("{}/p3/hello", shop.base)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "hello from p3");

    for (prefix, name) in [("p2", "p2-echo"), ("p3", "p3-echo")] {
        let r = client()
            .post(format!("{}/{prefix}/items?x=1", shop.base))
            .body("twelve bytes")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{prefix}");
        let echo: Value = r.json().unwrap();
        assert_eq!(echo["component"], name);
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["body_len"], 12);
        assert_eq!(
            echo["uri"],
            format!("{}/{prefix}/items?x=1", shop.base),
            "{prefix} sees the absolute URI"
        );
        assert_eq!(header(&echo, "spin-path-info"), "/items");
    }

    // Both worlds report instantiation time.
    let metrics = shop.metrics();
    for c in ["hello", "echo-p2", "echo-p3"] {
        assert!(
            metric_value(
                &metrics,
                "shop_component_instantiation_duration_seconds_count",
                &[("component", c)]
            ) >= 1.0,
            "no instantiation samples for {c}:\n{metrics}"
        );
    }
    assert!(
        metric_value(
            &metrics,
            "shop_http_requests_total",
            &[("component", "echo-p3"), ("status", "200")]
        ) >= 2.0
    );
}

#[test]
fn routes_pick_the_most_specific_match_and_set_spin_headers() {
    let dir = TempDir::new("routes");
    let manifest = dir.manifest(&format!(
        "{}{}{}{}{}{}{}{}",
        http_trigger("/...", "root"),
        http_trigger("/api/...", "api"),
        http_trigger("/api/exact", "exact"),
        http_trigger("/users/:user_id", "user"),
        component("root", "p2-echo", ""),
        component("api", "p2-echo", ""),
        component("exact", "p2-echo", ""),
        component("user", "p2-echo", ""),
    ));
    let shop = Shop::start(&manifest, &dir.path().join("data"));
    let host = shop.base.trim_start_matches("http://").to_string();

    struct Case {
        path: &'static str,
        raw_route: &'static str,
        component_route: &'static str,
        path_info: &'static str,
    }
    let cases = [
        Case {
            path: "/",
            raw_route: "/...",
            component_route: "",
            path_info: "/",
        },
        Case {
            path: "/other/thing?q=1",
            raw_route: "/...",
            component_route: "",
            path_info: "/other/thing",
        },
        Case {
            path: "/api",
            raw_route: "/api/...",
            component_route: "/api",
            path_info: "",
        },
        Case {
            path: "/api/a/b?q=2",
            raw_route: "/api/...",
            component_route: "/api",
            path_info: "/a/b",
        },
        Case {
            path: "/api/exact",
            raw_route: "/api/exact",
            component_route: "/api/exact",
            path_info: "",
        },
        Case {
            path: "/api/exact/more",
            raw_route: "/api/...",
            component_route: "/api",
            path_info: "/exact/more",
        },
        Case {
            path: "/users/42",
            raw_route: "/users/:user_id",
            component_route: "/users/:user_id",
            path_info: "",
        },
    ];
    for case in cases {
        let r = client()
            .get(format!("{}{}", shop.base, case.path))
            .header("spin-matched-route", "/spoofed")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{}", case.path);
        let local_port = r.remote_addr().map(|a| a.port());
        let echo: Value = r.json().unwrap();
        let at = case.path;
        assert_eq!(header(&echo, "spin-raw-component-route"), case.raw_route, "{at}");
        assert_eq!(
            header(&echo, "spin-matched-route"),
            case.raw_route,
            "{at}: spoofed header must be replaced"
        );
        assert_eq!(header(&echo, "spin-component-route"), case.component_route, "{at}");
        assert_eq!(header(&echo, "spin-path-info"), case.path_info, "{at}");
        assert_eq!(
            header(&echo, "spin-full-url"),
            format!("http://{host}{}", case.path),
            "{at}"
        );
        assert_eq!(header(&echo, "spin-base-path"), "/", "{at}");
        let client_addr = header(&echo, "spin-client-addr");
        assert!(client_addr.starts_with("127.0.0.1:"), "{at}: {client_addr}");
        assert_ne!(
            Some(client_addr.rsplit(':').next().unwrap().parse::<u16>().unwrap()),
            local_port,
            "client port, not server port"
        );
        assert!(!header(&echo, "x-request-id").is_empty());
    }
    let (_, echo) = get_json(&format!("{}/users/42", shop.base));
    assert_eq!(header(&echo, "spin-path-match-user-id"), "42");

    // A caller-supplied request id is passed through to the guest. The response
    // carries what the guest set and nothing the host adds, as on Spin.
    let r = client()
        .get(format!("{}/api/x", shop.base))
        .header("x-request-id", "req-123")
        .send()
        .unwrap();
    let added: Vec<&str> = r
        .headers()
        .keys()
        .map(|k| k.as_str())
        .filter(|k| !matches!(*k, "content-type" | "content-length" | "transfer-encoding" | "date"))
        .collect();
    assert!(added.is_empty(), "headers the guest did not set: {added:?}");
    let echo: Value = r.json().unwrap();
    assert_eq!(header(&echo, "x-request-id"), "req-123");

    // Spin's reserved endpoints, answered by the host itself with headers that keep
    // browsers from rendering, framing or sniffing them.
    for (path, status) in [("health", 200), ("info", 200), ("nope", 404)] {
        let r = client()
            .get(format!("{}/.well-known/spin/{path}", shop.base))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert!(
            header("content-security-policy").contains("frame-ancestors 'none'"),
            "{path}"
        );
        if path == "health" {
            assert_eq!(r.text().unwrap(), "OK");
        }
    }
}

#[test]
fn unmatched_paths_get_a_json_404() {
    let dir = TempDir::new("nomatch");
    let manifest = dir.manifest(&format!(
        "{}{}",
        http_trigger("/only", "c"),
        component("c", "p2-hello", "")
    ));
    let shop = Shop::start(&manifest, &dir.path().join("data"));
    let (status, body) = get_json(&format!("{}/elsewhere", shop.base));
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

#[test]
fn local_service_chaining_reaches_private_components_in_process() {
    let dir = TempDir::new("chain");
    let manifest = dir.manifest(&format!(
        "{}{}{}{}{}{}",
        http_trigger("/front", "chain-front"),
        http_trigger("/denied", "chain-denied"),
        private_trigger("chain-back"),
        component(
            "chain-front",
            "chain-front",
            "allowed_outbound_hosts = [\"http://chain-back.spin.internal\"]"
        ),
        component(
            "chain-denied",
            "chain-front",
            "allowed_outbound_hosts = [\"http://other.spin.internal\"]"
        ),
        component("chain-back", "p2-echo", ""),
    ));
    let shop = Shop::start(&manifest, &dir.path().join("data"));

    let (status, body) = get_json(&format!("{}/front", shop.base));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["back_status"], 200, "{body}");
    let back = &body["back_body"];
    assert_eq!(back["component"], "p2-echo");
    assert_eq!(header(back, "spin-matched-route"), "/...");
    assert_eq!(header(back, "spin-raw-component-route"), "/...");
    assert_eq!(header(back, "spin-component-route"), "");
    assert_eq!(header(back, "spin-path-info"), "/inner/path");
    assert_eq!(header(back, "spin-full-url"), "http://localhost/inner/path?x=1");
    assert_eq!(header(back, "spin-client-addr"), "0.0.0.0:0");

    // The private component has no public route.
    let (status, _) = get_json(&format!("{}/inner/path", shop.base));
    assert_eq!(status, 404);

    // Not in allowed_outbound_hosts: the guest sees Spin's denial, nothing is called.
    let (status, body) = get_json(&format!("{}/denied", shop.base));
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_lowercase();
    assert!(message.contains("denied"), "{body}");
    let metrics = shop.metrics();
    assert_eq!(
        metric_value(&metrics, "shop_http_requests_total", &[("component", "chain-back")]),
        1.0,
        "only the allowed call reached chain-back:\n{metrics}"
    );
}

/// `misbehave` under `/bad/...` and `p2-hello` at `/hello`.
/// `shop up` on `manifest` with `dir`'s data dir and these extra arguments.
fn start_with_args(manifest: &std::path::Path, dir: &TempDir, args: &[&str]) -> Shop {
    Shop::start_with(
        manifest,
        ShopOptions {
            data_dir: &dir.path().join("data"),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![],
        },
    )
}

fn misbehave_and_hello(dir: &TempDir) -> std::path::PathBuf {
    dir.manifest(&format!(
        "{}{}{}{}",
        http_trigger("/bad/...", "misbehave"),
        http_trigger("/hello", "hello"),
        component("misbehave", "misbehave", ""),
        component("hello", "p2-hello", "")
    ))
}

#[test]
fn misbehaving_components_get_error_statuses_while_others_keep_serving() {
    let dir = TempDir::new("misbehave");
    let shop = start_with_args(
        &misbehave_and_hello(&dir),
        &dir,
        &["--request-timeout-ms", "2000", "--max-memory-mb", "64"],
    );
    let base = shop.base.clone();
    let bad = |path: &'static str| {
        let base = base.clone();
        std::thread::spawn(move || {
            let r = client().get(format!("{base}/bad/{path}")).send().unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().unwrap();
            (status, body)
        })
    };
    let looping = bad("loop");
    let hog = bad("hog");
    let trap = bad("trap");
    // Normal traffic keeps succeeding while the bad requests run.
    let started = std::time::Instant::now();
    let mut ok = 0;
    while started.elapsed() < std::time::Duration::from_millis(1500) {
        let r = client().get(format!("{base}/hello")).send().unwrap();
        assert_eq!(r.status(), 200);
        ok += 1;
    }
    assert!(ok >= 5, "only {ok} normal requests completed while bad ones ran");

    let (status, body) = looping.join().unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "timeout");
    let (status, body) = hog.join().unwrap();
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "memory_limit", "{body}");
    let (status, body) = trap.join().unwrap();
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "trap");

    // The guest's panic message reached the host log as one event tagged with the
    // component and the request.
    let logs = shop.stderr.text();
    let line = logs
        .lines()
        .find(|l| l.contains("deliberate trap") && l.contains("\"target\":\"guest\""))
        .unwrap_or_else(|| panic!("no guest log line for the trap in:\n{logs}"));
    let event: Value = serde_json::from_str(line).unwrap();
    assert_eq!(event["component"], "misbehave", "{event}");
    assert_eq!(event["stream"], "stderr", "{event}");
    assert!(!event["request_id"].as_str().unwrap_or_default().is_empty(), "{event}");

    // The same component still serves good requests; the host is intact.
    let r = client().get(format!("{base}/bad/ok")).send().unwrap();
    assert_eq!(r.status(), 200);
    let metrics = shop.metrics();
    for kind in ["timeout", "memory_limit", "trap"] {
        assert_eq!(
            metric_value(
                &metrics,
                "shop_component_errors_total",
                &[("component", "misbehave"), ("kind", kind)]
            ),
            1.0,
            "{kind}:\n{metrics}"
        );
    }
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    let dir = TempDir::new("shutdown");
    let manifest = dir.manifest(&format!(
        "{}{}",
        http_trigger("/...", "misbehave"),
        component("misbehave", "misbehave", "")
    ));
    let shop = Shop::start(&manifest, &dir.path().join("data"));
    let base = shop.base.clone();
    let slow = std::thread::spawn(move || {
        client()
            .get(format!("{base}/sleep?ms=1000"))
            .send()
            .map(|r| r.status().as_u16())
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let base = shop.base.clone();
    let status = shop.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(slow.join().unwrap().unwrap(), 200, "in-flight request must complete");
    assert!(
        client().get(format!("{base}/sleep?ms=1")).send().is_err(),
        "listener must be closed"
    );
}

/// A one-route HTTP server on loopback answering `upstream ok` to every request.
fn upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::{BufRead, BufReader, Write};
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                    line.clear();
                }
                let _ = (&stream)
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\nupstream ok");
            });
        }
    });
    port
}

#[test]
fn outbound_http_follows_allowed_outbound_hosts() {
    let port = upstream();
    let other_port = upstream();
    let dir = TempDir::new("outbound");
    let manifest = dir.manifest(&format!(
        "[variables]\nupstream_host = {{ default = \"127.0.0.1\" }}\nloopback = {{ default = \"127.0.0.0/8\" }}\n\
         {}{}{}{}{}{}{}{}{}{}{}{}{}{}",
        http_trigger("/exact", "exact"),
        http_trigger("/wildcard-port", "wildcard-port"),
        http_trigger("/template", "template"),
        http_trigger("/cidr", "cidr"),
        http_trigger("/cidr-template", "cidr-template"),
        http_trigger("/other-network", "other-network"),
        http_trigger("/all", "all"),
        component(
            "exact",
            "chain-front",
            &format!("allowed_outbound_hosts = [\"http://127.0.0.1:{port}\"]")
        ),
        component(
            "wildcard-port",
            "chain-front",
            "allowed_outbound_hosts = [\"http://127.0.0.1:*\"]"
        ),
        component(
            "template",
            "chain-front",
            &format!("allowed_outbound_hosts = [\"http://{{{{ upstream_host }}}}:{port}\"]")
        ),
        component(
            "cidr",
            "chain-front",
            &format!("allowed_outbound_hosts = [\"http://127.0.0.0/24:{port}\"]")
        ),
        component(
            "cidr-template",
            "chain-front",
            "allowed_outbound_hosts = [\"*://{{ loopback }}:*\"]"
        ),
        component(
            "other-network",
            "chain-front",
            "allowed_outbound_hosts = [\"http://10.0.0.0/8:*\"]"
        ),
        component("all", "chain-front", "allowed_outbound_hosts = [\"*://*:*\"]"),
    ));
    let shop = Shop::start(&manifest, &dir.path().join("data"));
    let call = |route: &str, target_port: u16| -> (u16, Value) {
        let url = format!("{}/{route}?target=http%3A%2F%2F127.0.0.1%3A{target_port}%2F", shop.base);
        let r = client().get(url).send().unwrap();
        (r.status().as_u16(), r.json().unwrap())
    };
    let allowed = |route: &str, target_port: u16| {
        let (status, body) = call(route, target_port);
        assert_eq!(status, 200, "{route} -> :{target_port}: {body}");
        assert_eq!(body["back_body"], "upstream ok", "{body}");
    };
    let denied = |route: &str, target_port: u16| {
        let (status, body) = call(route, target_port);
        assert_eq!(status, 502, "{route} -> :{target_port}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("HttpRequestDenied"),
            "{body}"
        );
    };
    allowed("exact", port);
    denied("exact", other_port);
    allowed("wildcard-port", port);
    allowed("wildcard-port", other_port);
    allowed("template", port);
    denied("template", other_port);
    // IP ranges in CIDR notation, written out or from a variable, and allow-all.
    allowed("cidr", port);
    denied("cidr", other_port);
    allowed("cidr-template", port);
    allowed("cidr-template", other_port);
    denied("other-network", port);
    allowed("all", port);
    allowed("all", other_port);
}

/// Sends `request` raw on a new connection (then half-closes when `close` is set) and
/// returns the status and body of the answer.
fn raw_exchange(base: &str, request: &[u8], close: bool, pause: Option<std::time::Duration>) -> (u16, String) {
    use std::io::{Read, Write};
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    if let Some(pause) = pause {
        std::thread::sleep(pause);
    }
    if close {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let (head, mut body) = answer
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_ascii_lowercase(), b.to_string()))
        .unwrap_or_default();
    if head.contains("transfer-encoding: chunked") {
        // Size line, data, CRLF; a zero size ends it.
        let mut decoded = String::new();
        let mut rest = body.as_str();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 || after.len() < size {
                break;
            }
            decoded.push_str(&after[..size]);
            rest = after[size..].trim_start_matches("\r\n");
        }
        body = decoded;
    }
    (status, body)
}

/// What a client gets wrong about its body is a 4xx JSON answer, decided before any
/// component runs, and never tells of the host's internals, even with backtraces on.
#[test]
fn bad_request_bodies_get_json_4xx_before_any_component_runs() {
    let dir = TempDir::new("bad-bodies");
    let manifest = dir.manifest(&format!(
        "{}{}",
        http_trigger("/echo", "echo"),
        component("echo", "p2-echo", "")
    ));
    let shop = Shop::start_with(
        &manifest,
        ShopOptions {
            data_dir: &dir.path().join("data"),
            args: vec![
                "--max-request-body-bytes".into(),
                "1024".into(),
                "--request-timeout-ms".into(),
                "1000".into(),
            ],
            env: vec![("RUST_BACKTRACE".into(), "full".into())],
        },
    );
    let head = |extra: &str| format!("POST /echo HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n{extra}\r\n");
    /// (case, bytes sent, half-close after, pause before, status, error code)
    type Case<'a> = (&'a str, Vec<u8>, bool, Option<std::time::Duration>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "a declared length past the cap",
            head("content-length: 100000000\r\n").into_bytes(),
            false,
            None,
            413,
            "payload_too_large",
        ),
        (
            "a streamed body past the cap",
            format!(
                "{}{}",
                head("transfer-encoding: chunked\r\n"),
                "400\r\n".to_string() + &"x".repeat(1024) + "\r\n400\r\n" + &"x".repeat(1024) + "\r\n0\r\n\r\n"
            )
            .into_bytes(),
            false,
            None,
            413,
            "payload_too_large",
        ),
        (
            "a bad chunk",
            format!("{}zz\r\nhello\r\n0\r\n\r\n", head("transfer-encoding: chunked\r\n")).into_bytes(),
            false,
            None,
            400,
            "bad_request",
        ),
        (
            "a body cut off by the client",
            format!("{}0123456789", head("content-length: 100\r\n")).into_bytes(),
            true,
            None,
            400,
            "bad_request",
        ),
        (
            "a body too slow to arrive",
            format!("{}0", head("content-length: 10\r\n")).into_bytes(),
            false,
            Some(std::time::Duration::from_millis(1500)),
            408,
            "request_timeout",
        ),
    ];
    for (case, request, close, pause, status, code) in cases {
        let (got, body) = raw_exchange(&shop.base, &request, close, pause);
        assert_eq!(got, status, "{case}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{case}: not JSON ({e}): {body:?}"));
        assert_eq!(error["error"]["code"], code, "{case}: {body}");
        for internal in ["hyper", "backtrace", "panicked", ".rs:"] {
            assert!(
                !body.contains(internal),
                "{case}: the answer tells `{internal}`: {body}"
            );
        }
    }
    // Both framings at once: read by its chunks (RFC 9112 §6.3), the length ignored,
    // whatever it claims.
    let both = head("content-length: 2\r\ntransfer-encoding: chunked\r\n") + "5\r\nhello\r\n0\r\n\r\n";
    let (status, body) = raw_exchange(&shop.base, both.as_bytes(), false, None);
    assert_eq!(status, 200, "chunked with a length: {body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["body_len"], 5, "{body}");
    // And a well-formed body still reaches the component.
    let ok = head("content-length: 5\r\n") + "hello";
    let (status, body) = raw_exchange(&shop.base, ok.as_bytes(), false, None);
    assert_eq!(status, 200, "{body}");
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["body_len"], 5, "{body}");
}

/// Past `--max-concurrent-requests` a request is answered 503 + Retry-After at once
/// (JSON), instead of failing to instantiate; the shop serves again when load drops.
#[test]
fn requests_past_the_concurrency_cap_get_503_with_retry_after() {
    let dir = TempDir::new("busy");
    let shop = start_with_args(&misbehave_and_hello(&dir), &dir, &["--max-concurrent-requests", "2"]);
    let answers: Vec<(u16, Option<String>, Value)> = std::thread::scope(|scope| {
        let slow: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    let r = client().get(format!("{}/bad/sleep?ms=1500", shop.base)).send().unwrap();
                    let status = r.status().as_u16();
                    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                    (status, retry, r.json().unwrap_or(Value::Null))
                })
            })
            .collect();
        slow.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let served = answers.iter().filter(|(s, _, _)| *s == 200).count();
    let busy: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
    assert!(served <= 2 && served + busy.len() == answers.len(), "{answers:?}");
    assert!(!busy.is_empty(), "six at once under a cap of two: {answers:?}");
    for (_, retry, body) in busy {
        assert_eq!(retry.as_deref(), Some("1"), "{body}");
        assert_eq!(body["error"]["code"], "busy", "{body}");
    }
    let status = client().get(format!("{}/hello", shop.base)).send().unwrap().status();
    assert_eq!(status.as_u16(), 200, "served again once the load is gone");
}

/// Slowloris: one client holding idle connections gets no more than the cap; the next
/// one is answered 503 at once and closed, and a closed one frees its place.
#[test]
fn a_client_past_its_connection_cap_gets_503_and_others_are_served() {
    use std::io::{Read, Write};
    let dir = TempDir::new("conn-cap");
    let shop = start_with_args(&misbehave_and_hello(&dir), &dir, &["--max-connections-per-client", "4"]);
    let address = shop.base.trim_start_matches("http://").to_string();
    // Four connections that send half a request head and wait.
    let mut idle: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&address).unwrap();
            s.write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut fifth = std::net::TcpStream::connect(&address).unwrap();
    fifth.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    fifth.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections", "{answer}");
    // Closing one makes room for a request from the same client.
    drop(idle.pop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match client().get(format!("{}/hello", shop.base)).send() {
            Ok(r) if r.status() == 200 => break,
            other => assert!(std::time::Instant::now() < deadline, "not served again: {other:?}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A client that never finishes its request head loses the connection after the
/// header-read timeout instead of holding it.
#[test]
fn a_request_head_that_does_not_arrive_in_time_loses_its_connection() {
    use std::io::{Read, Write};
    let dir = TempDir::new("head-timeout");
    let shop = start_with_args(&misbehave_and_hello(&dir), &dir, &["--header-read-timeout-ms", "500"]);
    let address = shop.base.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    slow.write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n").unwrap();
    slow.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = slow.read_to_end(&mut rest);
    assert!(closed.is_ok(), "the host closed the connection: {closed:?}");
    let waited = started.elapsed();
    assert!(
        waited < std::time::Duration::from_secs(4),
        "held for {waited:?} with a 500 ms header timeout"
    );
    // A prompt client is served as ever.
    let status = client().get(format!("{}/hello", shop.base)).send().unwrap().status();
    assert_eq!(status.as_u16(), 200);
}

/// A connection that never sends a byte is closed after the header timeout, and so
/// is an HTTP/2 connection that opens and then sends no request (hostile clients
/// would hold sockets otherwise); an HTTP/1 keep-alive connection closes when the
/// next request head does not come; a connection waiting on a slow answer is never
/// cut.
#[test]
fn silent_and_idle_connections_are_closed_busy_ones_are_not() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let dir = TempDir::new("idle-connections");
    let shop = start_with_args(
        &misbehave_and_hello(&dir),
        &dir,
        &[
            "--header-read-timeout-ms",
            "500",
            "--idle-connection-timeout-ms",
            "1000",
        ],
    );
    let address = shop.base.trim_start_matches("http://").to_string();
    let closed_within = |stream: &mut std::net::TcpStream| {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let read = stream.read_to_end(&mut rest);
        assert!(read.is_ok(), "the host closed the connection: {read:?}");
        (started.elapsed(), rest)
    };

    let mut silent = std::net::TcpStream::connect(&address).unwrap();
    let (waited, _) = closed_within(&mut silent);
    assert!(waited < Duration::from_secs(3), "a silent connection held {waited:?}");

    // HTTP/2 with prior knowledge: the preface and an empty SETTINGS frame, then
    // nothing. The host answers with its own SETTINGS and, idle, closes.
    let mut h2 = std::net::TcpStream::connect(&address).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let (waited, frames) = closed_within(&mut h2);
    assert!(frames.len() >= 9 && frames[3] == 4, "the host spoke HTTP/2: {frames:?}");
    assert!(
        waited < Duration::from_secs(4),
        "an idle HTTP/2 connection held {waited:?}"
    );

    let mut idle = std::net::TcpStream::connect(&address).unwrap();
    idle.write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let (waited, answer) = closed_within(&mut idle);
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        waited < Duration::from_secs(4),
        "an idle keep-alive connection held {waited:?}"
    );

    // A request taking longer than both timeouts keeps its connection to the end.
    let mut busy = std::net::TcpStream::connect(&address).unwrap();
    busy.write_all(b"GET /bad/sleep?ms=2500 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let (_, answer) = closed_within(&mut busy);
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}
