use super::*;
use serde_json::json;

#[test]
fn machine_gets_defaults_and_a_generated_id() {
    let (key, v) = normalize(Kind::Machine, json!({"name": "web-1", "macs": ["52:54:00:AA:bb:01"]})).unwrap();
    assert_eq!(v["id"], key);
    assert_eq!(v["bootenv"], "discovery");
    assert_eq!(v["macs"][0], "52:54:00:aa:bb:01", "MACs are normalised to lower case");
    assert_eq!(v["runnable"], true);
}

#[test]
fn errors_name_the_object_the_field_and_what_was_expected() {
    let e = normalize(Kind::Machine, json!({"name": "web-1", "macs": ["zz"]})).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("macs[0]"));
    assert!(e.to_string().contains("expected a MAC address"), "{e}");

    let e = normalize(Kind::Machine, json!({"name": 5})).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("name"));
    assert!(e.message.contains("invalid type"), "{e}");

    let e = normalize(Kind::Machine, json!({"name": "a", "colour": "red"})).unwrap_err();
    assert!(e.message.contains("unknown field `colour`"), "{e}");

    let e = normalize(Kind::Machine, json!([1])).unwrap_err();
    assert!(e.message.contains("expected a JSON object"), "{e}");
}

#[test]
fn names_are_checked() {
    for bad in ["", "-x", "a b", "a/b", "../x", "x\u{0}"] {
        assert!(bad.parse::<Name>().is_err(), "{bad:?} accepted");
    }
    for good in ["a", "web-1", "debian_12.4", "A9"] {
        assert!(good.parse::<Name>().is_ok(), "{good:?} refused");
    }
    assert!("a".repeat(129).parse::<Name>().is_err());
}

#[test]
fn subnet_range_must_lie_in_its_cidr() {
    let base = json!({"name": "lab", "cidr": "10.0.0.0/24", "range_start": "10.0.0.10", "range_end": "10.0.0.200"});
    assert!(normalize(Kind::Subnet, base.clone()).is_ok());
    let mut bad = base.clone();
    bad["range_end"] = json!("10.0.1.5");
    assert_eq!(normalize(Kind::Subnet, bad).unwrap_err().field.as_deref(), Some("range_end"));
    let mut bad = base.clone();
    bad["cidr"] = json!("10.0.0.1/24");
    let e = normalize(Kind::Subnet, bad).unwrap_err();
    assert!(e.message.contains("host bits"), "{e}");
    let mut bad = base;
    bad["options"] = json!([{"code": 66, "text": "x", "hex": "01"}]);
    assert!(normalize(Kind::Subnet, bad).unwrap_err().message.contains("exactly one"));
}

#[test]
fn param_schema_must_be_a_valid_json_schema() {
    assert!(
        normalize(Kind::Param, json!({"name": "ntp", "schema": {"type": "array", "items": {"type": "string"}}}))
            .is_ok()
    );
    let e = normalize(Kind::Param, json!({"name": "ntp", "schema": {"type": "strnig"}})).unwrap_err();
    assert!(e.field.unwrap().starts_with("schema"));
    let e = normalize(Kind::Param, json!({"name": "ntp", "schema": {"type": "integer", "default": "x"}})).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("schema.default"));
    let e = normalize(Kind::Param, json!({"name": "ntp", "schema": 3})).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("schema"));
}

#[test]
fn param_values_are_checked_against_the_schema() {
    let p: Param = decode(json!({"name": "ntp", "schema": {"type": "array", "items": {"type": "string"}}})).unwrap();
    assert!(p.check_value(&json!(["a"])).is_ok());
    let e = p.check_value(&json!([1])).unwrap_err();
    assert!(e.contains("/0"), "{e}");
}

#[test]
fn merge_patch_follows_rfc_7396() {
    let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
    merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
    assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
    merge_patch(&mut doc, &json!({"a": [1]}));
    assert_eq!(doc["a"], json!([1]));
}

#[test]
fn every_kind_round_trips_its_plural_and_has_a_schema() {
    for k in Kind::ALL {
        assert_eq!(Kind::from_plural(k.plural()), Some(k));
        let s = schema_of(k);
        assert!(s["properties"][k.key_field()].is_object(), "{k} lacks its key field in the schema");
    }
}

#[test]
fn user_password_is_write_only() {
    let (_, v) = normalize(Kind::User, json!({"name": "ops", "password": "correct horse"})).unwrap();
    assert!(v.get("password").is_none());
    let e = normalize(Kind::User, json!({"name": "ops", "password": "short"})).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("password"));
}

#[test]
fn minted_tokens_match_only_their_own_secret() {
    let (t, bearer) = Token::mint(Name::known("admin"), String::new(), now(), None);
    let secret = bearer.strip_prefix(&format!("plt_{}.", t.id)).unwrap();
    assert!(secret.len() >= 64, "{bearer}");
    assert!(t.secret_matches(secret));
    assert!(!t.secret_matches(&secret[1..]));
    assert!(!t.secret_matches(&format!("{secret}x")));
    let (other, _) = Token::mint(Name::known("admin"), String::new(), now(), None);
    assert_ne!(other.secret_hash, t.secret_hash);
}

#[test]
fn claims_match_kind_action_and_name_patterns() {
    use crate::objects::glob;
    let c = Claim { kind: "machines".into(), action: "*".into(), name: Some("web-*".into()) };
    assert!(c.allows("machines", "update", Some("web-7")));
    assert!(!c.allows("machines", "update", Some("db-1")));
    assert!(!c.allows("machines", "read", None), "a named claim does not cover the whole collection");
    assert!(!c.allows("profiles", "read", Some("web-7")));
    let all = Claim::new("*", "*");
    assert!(all.allows("users", "delete", Some("x")) && all.covers(&c));
    assert!(c.covers(&Claim { kind: "machines".into(), action: "read".into(), name: Some("web-1".into()) }));
    assert!(!c.covers(&Claim::new("machines", "read")));
    assert!(!Claim::new("machines", "read").covers(&Claim::new("machines", "*")));
    assert!(glob("a*b*c", "aXXbYc") && !glob("a*b", "ab-") && glob("*", "") && glob("x", "x") && !glob("x", "xy"));
    assert!(glob("*-db-*", "rack1-db-07") && !glob("*-db-*", "rack1-web-07"));
    // No blow-up on a hostile pattern.
    let long = "a".repeat(5000);
    let start = std::time::Instant::now();
    assert!(!glob(&format!("{}b", "a*".repeat(100)), &long));
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
    assert!(Claim::new("nonsense", "read").check().is_err());
    assert!(Claim::new("audit", "fly").check().is_err());
    assert!(Claim::new("secure", "read").check().is_ok());
    let role =
        normalize(Kind::Role, serde_json::json!({"name": "r", "claims": [{"kind": "machines", "action": "eat"}]}));
    assert!(role.unwrap_err().to_string().contains("unknown action"));
}

#[test]
fn a_hex_option_of_other_characters_is_refused_not_a_panic() {
    let o: DhcpOption = serde_json::from_value(json!({"code": 33, "hex": "\u{e9}\u{e9}"})).unwrap();
    assert!(o.bytes().unwrap_err().contains("not hex"));
    let o: DhcpOption = serde_json::from_value(json!({"code": 33, "hex": "0a:0B"})).unwrap();
    assert_eq!(o.bytes().unwrap(), vec![10, 11]);
}
