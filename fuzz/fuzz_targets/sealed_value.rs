//! Sealed values: any bytes as a sealed value's text, or as the JSON that
//! holds it, never open (and never panic); a value sealed for one param
//! opens to itself, for that param only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn keyring() -> &'static plinth_secrets::Keyring {
    static K: OnceLock<plinth_secrets::Keyring> = OnceLock::new();
    K.get_or_init(|| plinth_secrets::Keyring::from_raw(&[[7u8; 32]]).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let k = keyring();
    let text = String::from_utf8_lossy(data).into_owned();
    let forged = serde_json::json!({ plinth_secrets::SEALED: text });
    assert!(k.open("p", &forged).is_err(), "a forged value opened");
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = k.open("p", &v);
        let sealed = k.seal("p", &v).unwrap();
        assert_eq!(k.open("p", &sealed).unwrap(), v);
        assert!(k.open("q", &sealed).is_err());
    }
});
