//! Typed identifiers and small value types. Each parses from a string with a
//! message that says what was expected, and serialises back to that string.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Implements Display/Serialize/Deserialize/JsonSchema for a type with
/// `FromStr<Err = String>` and `Display`-able inner value.
macro_rules! string_type {
    ($t:ident, $schema:expr) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = Cow::<'de, str>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl JsonSchema for $t {
            fn schema_name() -> Cow<'static, str> {
                stringify!($t).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
}

const NAME_MAX: usize = 128;

fn check_name(s: &str, what: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if s.is_empty() {
        return Err(format!("expected a {what}, got an empty string"));
    }
    if s.len() > NAME_MAX {
        return Err(format!("expected a {what} of at most {NAME_MAX} characters, got {}", s.len()));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) || !s.chars().all(ok_char) {
        return Err(format!(
            "expected a {what} of letters, digits, `-`, `_` and `.` starting with a letter or digit, got `{}`",
            s.escape_debug()
        ));
    }
    Ok(())
}

/// The name of a named object (bootenv, template, profile, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// A name the code itself spells (a built-in object); checked in tests.
    pub fn known(s: &'static str) -> Name {
        debug_assert!(check_name(s, "name").is_ok(), "built-in name {s} is invalid");
        Name(s.to_owned())
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        check_name(s, "name")?;
        Ok(Name(s.to_owned()))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_type!(Name, json_schema!({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}));

/// The name of a param, e.g. `ntp-servers`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamName(String);

impl ParamName {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ParamName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        check_name(s, "param name")?;
        Ok(ParamName(s.to_owned()))
    }
}

impl fmt::Display for ParamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_type!(ParamName, json_schema!({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}));

macro_rules! uuid_id {
    ($(#[$m:meta])* $t:ident, $what:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $t(pub uuid::Uuid);

        impl $t {
            /// A fresh random id.
            pub fn generate() -> Self {
                $t(uuid::Uuid::new_v4())
            }
        }

        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                uuid::Uuid::parse_str(s)
                    .map($t)
                    .map_err(|_| format!("expected a {} (a UUID like 6f1c2a9e-0b7d-4c1e-9a53-2d1f0e8b7c44), got `{}`", $what, s.escape_debug()))
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        string_type!($t, json_schema!({"type": "string", "format": "uuid"}));
    };
}

uuid_id!(
    /// A machine's stable identity.
    MachineId,
    "machine id"
);
uuid_id!(
    /// A job's identity.
    JobId,
    "job id"
);
uuid_id!(
    /// An API token's identity (the public half of a token).
    TokenId,
    "token id"
);
uuid_id!(
    /// A registration conflict's identity.
    ConflictId,
    "conflict id"
);

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("expected a MAC address like 52:54:00:12:34:56, got `{}`", s.escape_debug());
        let parts: Vec<&str> = if s.contains(':') {
            s.split(':').collect()
        } else if s.contains('-') {
            s.split('-').collect()
        } else {
            return Err(err());
        };
        if parts.len() != 6 {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(err());
            }
            out[i] = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

string_type!(
    MacAddr,
    json_schema!({"type": "string", "pattern": "^([0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{2}(-[0-9A-Fa-f]{2}){5})$"})
);

/// An IPv4 network in CIDR notation, e.g. `10.0.0.0/24`. The address must be
/// the network address (no host bits set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The netmask.
    pub fn mask(&self) -> Ipv4Addr {
        let bits = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
        Ipv4Addr::from(bits)
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.mask()) == u32::from(self.addr)
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !u32::from(self.mask()))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = |why: &str| format!("expected an IPv4 network like 10.0.0.0/24, got `{}`: {why}", s.escape_debug());
        let (a, p) = s.split_once('/').ok_or_else(|| err("missing `/prefix`"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| err("bad address"))?;
        let prefix: u8 = p.parse().map_err(|_| err("bad prefix length"))?;
        if prefix > 32 {
            return Err(err("prefix length above 32"));
        }
        let cidr = Ipv4Cidr { addr, prefix };
        if cidr.addr != Ipv4Addr::from(u32::from(addr) & u32::from(cidr.mask())) {
            return Err(err("host bits are set; use the network address"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

string_type!(
    Ipv4Cidr,
    json_schema!({"type": "string", "pattern": "^(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}/(3[0-2]|[12]?[0-9])$"})
);
