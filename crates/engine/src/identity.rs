//! Matching a machine that says who it is (agent registration, discovery,
//! a cloud VM joining) to a stored Machine. Never by IP address: addresses
//! move. The score of a candidate:
//!
//! | evidence | points |
//! | --- | --- |
//! | same system UUID (DMI `product_uuid`) | 100 |
//! | same system serial number | 50 |
//! | each MAC address in common | 40 (at most 80) |
//!
//! A candidate needs at least [`THRESHOLD`] points (one MAC, or the UUID).
//! UUIDs and serials that vendors leave unset or fill with placeholders are
//! ignored. Two different machines with the best score are an ambiguity the
//! operator must resolve, not a guess.

use plinth_model::{MacAddr, Machine};
use serde_json::Value;

/// Lowest score that counts as a match.
pub const THRESHOLD: u32 = 40;

/// What a machine says about itself.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    pub macs: Vec<MacAddr>,
    pub system_uuid: Option<String>,
    pub serial: Option<String>,
}

fn junk_uuid(u: &str) -> bool {
    let hex: String = u.chars().filter(|c| c.is_ascii_hexdigit()).collect::<String>().to_ascii_lowercase();
    hex.len() != 32
        || hex.chars().all(|c| c == '0')
        || hex.chars().all(|c| c == 'f')
        // A placeholder some firmware ships.
        || hex == "03000200040005000006000700080009"
}

fn junk_serial(s: &str) -> bool {
    let t = s.trim().to_ascii_lowercase();
    t.len() < 3
        || t.chars().all(|c| c == '0' || c == ' ')
        || [
            "to be filled by o.e.m.",
            "system serial number",
            "default string",
            "not specified",
            "none",
            "0123456789",
            "chassis serial number",
        ]
        .contains(&t.as_str())
}

impl Claim {
    /// The claim's UUID when it identifies something.
    pub fn uuid(&self) -> Option<String> {
        self.system_uuid.as_deref().filter(|u| !junk_uuid(u)).map(|u| u.trim().to_ascii_lowercase())
    }

    /// The claim's serial when it identifies something.
    pub fn serial(&self) -> Option<String> {
        self.serial.as_deref().filter(|s| !junk_serial(s)).map(|s| s.trim().to_owned())
    }
}

fn inventory_str<'a>(m: &'a Machine, field: &str) -> Option<&'a str> {
    m.inventory.get("system").and_then(|s| s.get(field)).and_then(Value::as_str)
}

/// How well `m` matches `claim`.
pub fn score(m: &Machine, claim: &Claim) -> u32 {
    let mut points = 0;
    if let (Some(want), Some(have)) = (claim.uuid(), inventory_str(m, "uuid"))
        && !junk_uuid(have)
        && want == have.trim().to_ascii_lowercase()
    {
        points += 100;
    }
    if let (Some(want), Some(have)) = (claim.serial(), inventory_str(m, "serial"))
        && !junk_serial(have)
        && want == have.trim()
    {
        points += 50;
    }
    let shared = claim.macs.iter().filter(|mac| m.macs.contains(mac)).count() as u32;
    points + (shared * 40).min(80)
}

/// The best match among `candidates`: `Ok(None)` when none reaches the
/// threshold, `Err` with the tied machines when two share the best score.
pub fn best<'a>(candidates: &'a [Machine], claim: &Claim) -> Result<Option<(&'a Machine, u32)>, Vec<&'a Machine>> {
    let mut scored: Vec<(&Machine, u32)> =
        candidates.iter().map(|m| (m, score(m, claim))).filter(|(_, s)| *s >= THRESHOLD).collect();
    scored.sort_by_key(|s| std::cmp::Reverse(s.1));
    match scored.as_slice() {
        [] => Ok(None),
        [(m, s)] => Ok(Some((m, *s))),
        [(a, sa), (b, sb), ..] if sa == sb && a.id != b.id => {
            Err(scored.iter().filter(|(_, s)| s == sa).map(|(m, _)| *m).collect())
        }
        [(m, s), ..] => Ok(Some((m, *s))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn machine(name: &str, macs: &[&str], uuid: Option<&str>, serial: Option<&str>) -> Machine {
        let v = json!({"name": name, "macs": macs, "inventory": {"system": {"uuid": uuid, "serial": serial}}});
        plinth_model::decode(plinth_model::normalize(plinth_model::Kind::Machine, v).unwrap().1).unwrap()
    }

    fn claim(macs: &[&str], uuid: Option<&str>, serial: Option<&str>) -> Claim {
        Claim {
            macs: macs.iter().map(|m| m.parse().unwrap()).collect(),
            system_uuid: uuid.map(Into::into),
            serial: serial.map(Into::into),
        }
    }

    const U1: &str = "4c4c4544-0042-3510-8051-b4c04f5a4d32";

    #[test]
    fn evidence_adds_up_and_junk_counts_for_nothing() {
        let m = machine("a", &["52:54:00:00:00:01", "52:54:00:00:00:02"], Some(U1), Some("SN123"));
        assert_eq!(score(&m, &claim(&[], Some(U1), None)), 100);
        assert_eq!(score(&m, &claim(&[], Some(&U1.to_uppercase()), None)), 100, "case does not matter");
        assert_eq!(score(&m, &claim(&["52:54:00:00:00:01"], None, Some("SN123"))), 90);
        assert_eq!(score(&m, &claim(&["52:54:00:00:00:01", "52:54:00:00:00:02"], Some(U1), Some("SN123"))), 230);
        let junk = machine("j", &[], Some("00000000-0000-0000-0000-000000000000"), Some("To be filled by O.E.M."));
        assert_eq!(
            score(&junk, &claim(&[], Some("00000000-0000-0000-0000-000000000000"), Some("To be filled by O.E.M."))),
            0
        );
        assert_eq!(score(&m, &claim(&["52:54:00:00:00:09"], None, None)), 0, "an IP or nothing in common is no match");
    }

    #[test]
    fn the_best_match_wins_and_a_tie_is_refused() {
        let a = machine("a", &["52:54:00:00:00:01"], Some(U1), None);
        let b = machine("b", &["52:54:00:00:00:02"], None, None);
        let all = vec![a.clone(), b.clone()];
        // A NIC moved from b to a: the UUID says it is a.
        let (m, s) = best(&all, &claim(&["52:54:00:00:00:02"], Some(U1), None)).unwrap().unwrap();
        assert_eq!((m.name.as_str(), s), ("a", 100));
        assert!(best(&all, &claim(&["52:54:00:00:00:03"], None, None)).unwrap().is_none());
        let tie = best(&all, &claim(&["52:54:00:00:00:01", "52:54:00:00:00:02"], None, None)).unwrap_err();
        assert_eq!(tie.len(), 2);
    }
}
