//! The Redfish driver against a BMC that misbehaves: a fake service on
//! loopback (plain HTTP for the lab opt-out, or TLS with a certificate of
//! its own) answering garbage, links off the BMC, redirects, refusals,
//! floods and silence. Each ends as an error that says what happened, and
//! the password goes nowhere but the BMC.

use plinth_model::{Bmc, BmcDriver, PowerAction, PowerState};
use plinth_power::{Driver, Limits, PowerError};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake BMC answers to a request: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, Vec<u8>);

/// Every request the fake BMC received: request line, headers, body.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

/// A fake BMC on 127.0.0.1: `answer` maps "METHOD PATH" to its answer
/// (`None`: hold the connection open and say nothing).
fn serve(tls: Option<Arc<rustls::ServerConfig>>, answer: fn(&str) -> Option<Answer>) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Seen::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(64) {
            let Ok(conn) = conn else { continue };
            let (tls, log) = (tls.clone(), log.clone());
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                match tls {
                    Some(cfg) => {
                        let Ok(session) = rustls::ServerConnection::new(cfg) else { return };
                        handle(rustls::StreamOwned::new(session, conn), &log, answer);
                    }
                    None => handle(conn, &log, answer),
                }
            });
        }
    });
    (format!("127.0.0.1:{port}"), seen)
}

fn handle<S: Read + Write>(stream: S, log: &Seen, answer: fn(&str) -> Option<Answer>) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut length = 0usize;
    let mut head = String::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        head.push_str(&h);
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let request = line.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    log.0.lock().unwrap().push(format!("{request}\n{head}{}", String::from_utf8_lossy(&body)));
    let Some((status, headers, body)) = answer(&request) else {
        std::thread::sleep(Duration::from_secs(8));
        return;
    };
    let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let stream = reader.get_mut();
    let _ = stream.write_all(out.as_bytes()).and_then(|_| stream.write_all(&body)).and_then(|_| stream.flush());
}

fn json(status: u16, v: serde_json::Value) -> Option<Answer> {
    Some((status, vec![("Content-Type", "application/json".into())], v.to_string().into_bytes()))
}

const PASSWORD: &str = "bmc-Secret-4411";

/// A Redfish BMC at `address`, any certificate accepted (the lab opt-out).
fn bmc(address: &str) -> Bmc {
    Bmc {
        driver: BmcDriver::Redfish,
        address: address.into(),
        username: "admin".into(),
        password: serde_json::Value::Null,
        cipher_suite: None,
        system: None,
        ca_pem: None,
        fingerprint: None,
        insecure_tls: true,
    }
}

fn driver(b: &Bmc) -> Driver {
    let limits = Limits { timeout: Duration::from_secs(2), ..Limits::default() };
    Driver::new(b, PASSWORD, &limits).unwrap()
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

#[test]
fn garbage_foreign_links_redirects_and_floods_are_refused_in_words() {
    let (addr, seen) = serve(None, |req| match req {
        "GET /redfish/v1/Systems" => {
            json(200, serde_json::json!({"Members": [{"@odata.id": "https://evil.example/redfish/v1/Systems/1"}]}))
        }
        "GET /redfish/v1/Systems/garbage" => Some((200, vec![], b"<html>hello</html>".to_vec())),
        "GET /redfish/v1/Systems/maybe" => json(200, serde_json::json!({"PowerState": "Maybe\u{7}"})),
        "GET /redfish/v1/Systems/moved" => {
            Some((302, vec![("Location", "http://127.0.0.2/redfish/v1/Systems/1".into())], vec![]))
        }
        "GET /redfish/v1/Systems/locked" => {
            json(401, serde_json::json!({"error": {"@Message.ExtendedInfo": [{"Message": "Invalid credentials"}]}}))
        }
        "GET /redfish/v1/Systems/flood" => Some((200, vec![], vec![b' '; 3 << 20])),
        "GET /redfish/v1/Systems/offsite" => json(
            200,
            serde_json::json!({"PowerState": "On", "Actions": {"#ComputerSystem.Reset":
                {"target": "https://evil.example/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"}}}),
        ),
        "GET /redfish/v1/Systems/silent" => None,
        _ => json(404, serde_json::json!({})),
    });
    let with_system = |s: &str| Bmc { system: Some(s.into()), ..bmc(&format!("http://{addr}")) };
    let mut errors = Vec::new();
    let mut expect = |e: PowerError, ok: bool| {
        assert!(ok, "{e:?}");
        errors.push(e);
    };

    let e = run(driver(&bmc(&format!("http://{addr}"))).status()).unwrap_err();
    let ok = matches!(e, PowerError::Garbage(_)) && e.to_string().contains("leaves the BMC's Redfish tree");
    expect(e, ok);
    let e = run(driver(&with_system("garbage")).status()).unwrap_err();
    let ok = e.to_string().contains("without JSON");
    expect(e, ok);
    let e = run(driver(&with_system("maybe")).status()).unwrap_err();
    let ok = e.to_string() == "unexpected answer: PowerState `Maybe`";
    expect(e, ok);
    let e = run(driver(&with_system("moved")).status()).unwrap_err();
    let ok = matches!(e, PowerError::Failed(_)) && e.to_string().contains("302");
    expect(e, ok);
    let e = run(driver(&with_system("locked")).status()).unwrap_err();
    let ok = matches!(e, PowerError::BadCredentials(_)) && e.to_string().contains("Invalid credentials");
    expect(e, ok);
    let e = run(driver(&with_system("flood")).status()).unwrap_err();
    let ok = e.to_string().contains("over 1048576 bytes");
    expect(e, ok);
    let e = run(driver(&with_system("offsite")).act(PowerAction::Off)).unwrap_err();
    let ok = e.to_string().contains("leaves the BMC's Redfish tree");
    expect(e, ok);
    let started = std::time::Instant::now();
    let e = run(driver(&with_system("silent")).status()).unwrap_err();
    let ok = matches!(e, PowerError::Unreachable(_))
        && e.to_string().contains("no answer")
        && started.elapsed() < Duration::from_secs(6);
    expect(e, ok);
    let e = run(driver(&with_system("nothing-here")).status()).unwrap_err();
    let ok = matches!(e, PowerError::Unsupported(_));
    expect(e, ok);
    for e in &errors {
        assert!(!e.to_string().contains(PASSWORD), "{e}");
    }

    // Only the BMC was asked, only for its own paths (never the redirect's
    // target or a foreign link), and always with basic credentials.
    let seen = seen.0.lock().unwrap();
    assert!(seen.len() >= 9, "{seen:?}");
    for r in seen.iter() {
        assert!(r.starts_with("GET /redfish/v1/Systems"), "{r}");
        assert!(r.to_ascii_lowercase().contains("authorization: basic "), "{r}");
    }
}

#[test]
fn unreachable_plain_http_and_a_certificate_mismatch_say_so() {
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let e = run(driver(&bmc(&format!("https://{closed}"))).status()).unwrap_err();
    assert!(matches!(e, PowerError::Unreachable(_)) && e.to_string().contains("cannot connect"), "{e}");

    // Plain HTTP only with the explicit lab opt-out; no other scheme.
    let plain = Bmc { insecure_tls: false, ..bmc("http://127.0.0.1:1") };
    let e = Driver::new(&plain, PASSWORD, &Limits::default()).unwrap_err();
    assert!(matches!(e, PowerError::Config(_)) && e.to_string().contains("in the clear"), "{e}");
    let e = Driver::new(&bmc("ftp://127.0.0.1:1"), PASSWORD, &Limits::default()).unwrap_err();
    assert!(matches!(e, PowerError::Config(_)), "{e}");

    // TLS with a certificate of the BMC's own: unknown to the host's roots,
    // not the pinned one; accepted when pinned, as the CA, or opted out.
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let (addr, seen) = serve(Some(Arc::new(cfg)), |req| match req {
        "GET /redfish/v1/Systems/1" => json(200, serde_json::json!({"PowerState": "Off"})),
        _ => json(404, serde_json::json!({})),
    });
    let tls = |f: &dyn Fn(&mut Bmc)| {
        let mut b = Bmc { system: Some("1".into()), insecure_tls: false, ..bmc(&addr) };
        f(&mut b);
        run(driver(&b).status())
    };
    let e = tls(&|_| {}).unwrap_err();
    assert!(matches!(e, PowerError::Tls(_)) && e.to_string().contains("certificate"), "{e}");
    let e = tls(&|b| b.fingerprint = Some("AB:".repeat(31) + "AB")).unwrap_err();
    assert!(matches!(e, PowerError::Tls(_)) && e.to_string().contains("not the pinned"), "{e}");
    assert!(!e.to_string().contains(PASSWORD), "{e}");
    assert!(seen.0.lock().unwrap().is_empty(), "a request went to a BMC that is not trusted");
    let pin = plinth_power::tls::hex_colons(&<sha2::Sha256 as sha2::Digest>::digest(der.as_ref()));
    assert_eq!(tls(&|b| b.fingerprint = Some(pin.clone())).unwrap(), PowerState::Off);
    let pem = cert.cert.pem();
    assert_eq!(tls(&|b| b.ca_pem = Some(pem.clone())).unwrap(), PowerState::Off);
    assert_eq!(tls(&|b| b.insecure_tls = true).unwrap(), PowerState::Off);
}
