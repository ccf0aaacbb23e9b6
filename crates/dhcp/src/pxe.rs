//! PXE, UEFI and iPXE awareness: what kind of boot client is asking, and
//! which boot file it gets.

use crate::{Message, code};
use std::collections::BTreeMap;

/// What boot firmware a client runs, from option 93 (RFC 4578, IANA
/// "Processor Architecture Types") and the vendor class (option 60).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS PXE (arch 0).
    Bios,
    /// UEFI on 32-bit x86 (arch 6).
    UefiIa32,
    /// UEFI on x86-64 (arch 7 or 9).
    UefiX64,
    /// UEFI on ARM64 (arch 11).
    UefiArm64,
    /// UEFI HTTP boot on x86-64 (arch 16, or vendor class `HTTPClient`).
    UefiHttpX64,
    /// UEFI HTTP boot on ARM64 (arch 19).
    UefiHttpArm64,
    /// Another architecture code.
    Other(u16),
}

impl Firmware {
    /// The key in a [`BootFiles`] map.
    pub fn key(self) -> Option<&'static str> {
        Some(match self {
            Firmware::Bios => "bios",
            Firmware::UefiIa32 => "uefi-ia32",
            Firmware::UefiX64 => "uefi-x64",
            Firmware::UefiArm64 => "uefi-arm64",
            Firmware::UefiHttpX64 => "uefi-http-x64",
            Firmware::UefiHttpArm64 => "uefi-http-arm64",
            Firmware::Other(_) => return None,
        })
    }

    /// Whether the client boots over HTTP and expects a URL as boot file.
    pub fn is_http(self) -> bool {
        matches!(self, Firmware::UefiHttpX64 | Firmware::UefiHttpArm64)
    }
}

/// What a request says about its sender as a boot client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootClient {
    /// Firmware, when the client is a network-boot client at all.
    pub firmware: Option<Firmware>,
    /// Vendor class starts with `PXEClient` or `HTTPClient`.
    pub pxe: bool,
    /// iPXE is already running (user class `iPXE` or option 175).
    pub ipxe: bool,
    /// Client machine identifier (option 97), when sent.
    pub uuid: Option<Vec<u8>>,
    /// Network interface identifier (option 94): type, major, minor (UNDI 2.1 is `(1, 2, 1)`).
    pub ndi: Option<(u8, u8, u8)>,
}

/// Classifies the sender of `m`.
pub fn classify(m: &Message) -> BootClient {
    let vendor = m.option(code::VENDOR_CLASS).unwrap_or_default();
    let pxe_class = vendor.starts_with(b"PXEClient");
    let http_class = vendor.starts_with(b"HTTPClient");
    let arch = m.option(code::CLIENT_ARCH).filter(|v| v.len() >= 2).map(|v| u16::from_be_bytes([v[0], v[1]]));
    let firmware = match arch {
        Some(0) => Some(Firmware::Bios),
        Some(6) => Some(Firmware::UefiIa32),
        Some(7 | 9) if http_class => Some(Firmware::UefiHttpX64),
        Some(7 | 9) => Some(Firmware::UefiX64),
        Some(11) if http_class => Some(Firmware::UefiHttpArm64),
        Some(11) => Some(Firmware::UefiArm64),
        Some(15 | 16) => Some(Firmware::UefiHttpX64),
        Some(19) => Some(Firmware::UefiHttpArm64),
        Some(other) => Some(Firmware::Other(other)),
        // A PXE client without option 93 is a BIOS client (PXE 2.1).
        None if pxe_class => Some(Firmware::Bios),
        None if http_class => Some(Firmware::UefiHttpX64),
        None => None,
    };
    let ipxe = m.option(code::IPXE).is_some()
        || m.option(code::USER_CLASS).is_some_and(|u| u == b"iPXE" || (u.len() > 1 && &u[1..] == b"iPXE"));
    BootClient {
        firmware,
        pxe: pxe_class || http_class,
        ipxe,
        uuid: m.option(code::CLIENT_UUID).map(<[u8]>::to_vec),
        ndi: m.option(code::CLIENT_NDI).filter(|v| v.len() == 3).map(|v| (v[0], v[1], v[2])),
    }
}

/// Which boot file each kind of client gets. Values are file paths (served
/// over TFTP from the file root) or URLs; `{http}` expands to the boot HTTP
/// server's base URL, `{mac}` to the client's MAC (`52-54-00-12-34-56`) and
/// `{server}` to the server's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles(pub BTreeMap<String, String>);

impl Default for BootFiles {
    fn default() -> BootFiles {
        BootFiles(
            [
                ("bios", "undionly.kpxe"),
                ("uefi-x64", "ipxe.efi"),
                ("uefi-arm64", "ipxe-arm64.efi"),
                ("uefi-http-x64", "{http}/files/ipxe.efi"),
                ("uefi-http-arm64", "{http}/files/ipxe-arm64.efi"),
                ("ipxe", "{http}/ipxe/{mac}"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        )
    }
}

impl BootFiles {
    /// Defaults overlaid with `overrides`.
    pub fn with_overrides(overrides: &BTreeMap<String, String>) -> BootFiles {
        let mut b = BootFiles::default();
        b.0.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        b
    }

    /// The boot file for `client`, expanded; `None` for clients that are
    /// not booting from the network or have no mapping.
    pub fn choose(&self, client: &BootClient, http: &str, server: &str, mac: &str) -> Option<String> {
        let key = if client.ipxe { "ipxe" } else { client.firmware?.key()? };
        let template = self.0.get(key)?;
        Some(template.replace("{http}", http).replace("{server}", server).replace("{mac}", mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageType;

    fn request(options: &[(u8, &[u8])]) -> Message {
        let mut m = Message::parse(&crate::message::tests_support::discover()).unwrap();
        for (c, v) in options {
            m.set_option(*c, v.to_vec());
        }
        assert_eq!(m.message_type(), Some(MessageType::Discover));
        m
    }

    type Opts<'a> = &'a [(u8, &'a [u8])];

    #[test]
    fn classifies_real_boot_clients() {
        let cases: &[(Opts, Option<Firmware>, bool)] = &[
            // SeaBIOS + iPXE ROM before iPXE takes over: PXEClient, arch 0.
            (&[(60, b"PXEClient:Arch:00000:UNDI:002001"), (93, &[0, 0])], Some(Firmware::Bios), false),
            // OVMF PXE.
            (&[(60, b"PXEClient:Arch:00007:UNDI:003000"), (93, &[0, 7])], Some(Firmware::UefiX64), false),
            // ARM64 UEFI.
            (&[(60, b"PXEClient:Arch:00011:UNDI:003000"), (93, &[0, 11])], Some(Firmware::UefiArm64), false),
            // UEFI HTTP boot.
            (&[(60, b"HTTPClient:Arch:00016:UNDI:003001"), (93, &[0, 16])], Some(Firmware::UefiHttpX64), false),
            // iPXE itself: user class iPXE and option 175.
            (
                &[(60, b"PXEClient:Arch:00000:UNDI:002001"), (93, &[0, 0]), (77, b"iPXE"), (175, &[0xb1, 1, 1])],
                Some(Firmware::Bios),
                true,
            ),
            // An OS client.
            (&[(60, b"udhcp 1.36.1")], None, false),
        ];
        for (opts, fw, ipxe) in cases {
            let c = classify(&request(opts));
            assert_eq!((c.firmware, c.ipxe), (*fw, *ipxe), "{opts:?}");
        }
    }

    #[test]
    fn chooses_boot_files_from_a_configurable_map() {
        let files = BootFiles::default();
        let pick = |opts: &[(u8, &[u8])]| {
            files.choose(&classify(&request(opts)), "http://10.0.0.1:8091", "10.0.0.1", "52-54-00-12-34-56")
        };
        assert_eq!(pick(&[(60, b"PXEClient"), (93, &[0, 0])]).as_deref(), Some("undionly.kpxe"));
        assert_eq!(pick(&[(60, b"PXEClient"), (93, &[0, 9])]).as_deref(), Some("ipxe.efi"));
        assert_eq!(pick(&[(60, b"PXEClient"), (93, &[0, 11])]).as_deref(), Some("ipxe-arm64.efi"));
        assert_eq!(
            pick(&[(60, b"HTTPClient"), (93, &[0, 16])]).as_deref(),
            Some("http://10.0.0.1:8091/files/ipxe.efi")
        );
        assert_eq!(pick(&[(77, b"iPXE")]).as_deref(), Some("http://10.0.0.1:8091/ipxe/52-54-00-12-34-56"));
        assert_eq!(pick(&[(60, b"udhcp")]), None);
        let custom = BootFiles::with_overrides(&[("uefi-x64".to_owned(), "snponly.efi".to_owned())].into());
        assert_eq!(
            custom.choose(&classify(&request(&[(60, b"PXEClient"), (93, &[0, 7])])), "", "", "").as_deref(),
            Some("snponly.efi")
        );
    }
}
