//! What a BMC answers: any bytes as ipmitool's output and error text, and
//! any JSON as a Redfish system, collection or link. Parsing never panics,
//! a link that leaves the BMC's Redfish tree is never followed, and an
//! error quoting the BMC stays short and printable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_model::PowerAction;
use plinth_power::{PowerError, ipmi, redfish};

fn bounded(e: &PowerError) {
    let text = e.to_string();
    assert!(text.len() < 600, "an error of {} bytes", text.len());
    assert!(!text.chars().any(|c| c.is_control()), "control characters in {text:?}");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = ipmi::parse_status(&text) {
        bounded(&e);
    }
    for action in [PowerAction::On, PowerAction::Off, PowerAction::Cycle, PowerAction::Reset, PowerAction::SoftOff] {
        if let Err(e) = ipmi::parse_control(&text, action) {
            bounded(&e);
        }
    }
    if let Err(e) = ipmi::parse_bootdev(&text, "pxe") {
        bounded(&e);
    }
    bounded(&ipmi::classify(&text, 3));
    if let Ok(p) = redfish::check_path(&text) {
        assert!(p.starts_with("/redfish/v1/") && !p.contains("..") && !p.contains('?'), "{p:?}");
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    for r in [redfish::power_state(&v).map(|_| ()), redfish::link(&v).map(|_| ())] {
        if let Err(e) = r {
            bounded(&e);
        }
    }
    match redfish::members(&v) {
        Ok(links) => assert!(links.iter().all(|l| l.starts_with("/redfish/v1/"))),
        Err(e) => bounded(&e),
    }
    match redfish::reset_action(&v) {
        Ok((target, _)) => assert!(target.starts_with("/redfish/v1/")),
        Err(e) => bounded(&e),
    }
    let nics = v.get("nics").and_then(|n| n.as_array()).cloned().unwrap_or_default();
    match redfish::identity(&v, &nics) {
        Ok(id) => assert!(id.uuid.is_none_or(|u| u.len() == 36)),
        Err(e) => bounded(&e),
    }
});
