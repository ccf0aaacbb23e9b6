//! The DHCP message codec.

use std::net::Ipv4Addr;

/// Option codes used by Plinth.
pub mod code {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const BROADCAST: u8 = 28;
    pub const NTP: u8 = 42;
    pub const VENDOR_SPECIFIC: u8 = 43;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_LIST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_SIZE: u8 = 57;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const VENDOR_CLASS: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const TFTP_SERVER: u8 = 66;
    pub const BOOTFILE: u8 = 67;
    pub const USER_CLASS: u8 = 77;
    pub const RELAY_AGENT: u8 = 82;
    pub const CLIENT_ARCH: u8 = 93;
    pub const CLIENT_NDI: u8 = 94;
    pub const CLIENT_UUID: u8 = 97;
    pub const IPXE: u8 = 175;
    pub const END: u8 = 255;
}

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<MessageType> {
        Some(match v {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            _ => return None,
        })
    }
}

/// Why a datagram is not a DHCP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("shorter than the {0}-byte fixed header")]
    Truncated(usize),
    #[error("no DHCP magic cookie")]
    NoCookie,
    #[error("option {0} runs past the end of the packet")]
    OptionOverrun(u8),
    #[error("op must be 1 (request) or 2 (reply), got {0}")]
    BadOp(u8),
    #[error("hardware address length {0} is over 16")]
    BadHlen(u8),
}

const FIXED: usize = 236;
const COOKIE: [u8; 4] = [99, 130, 83, 99];

/// A DHCP message. Options keep their order; repeated options are joined
/// on decode (RFC 3396).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub sname: Vec<u8>,
    pub file: Vec<u8>,
    pub options: Vec<(u8, Vec<u8>)>,
}

fn ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn trim_nul(b: &[u8]) -> Vec<u8> {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    b[..end].to_vec()
}

fn parse_options(mut b: &[u8], out: &mut Vec<(u8, Vec<u8>)>) -> Result<(), ParseError> {
    while let Some(&c) = b.first() {
        match c {
            code::PAD => b = &b[1..],
            code::END => break,
            _ => {
                let len = *b.get(1).ok_or(ParseError::OptionOverrun(c))? as usize;
                let value = b.get(2..2 + len).ok_or(ParseError::OptionOverrun(c))?;
                match out.iter_mut().find(|(k, _)| *k == c) {
                    Some((_, v)) => v.extend_from_slice(value),
                    None => out.push((c, value.to_vec())),
                }
                b = &b[2 + len..];
            }
        }
    }
    Ok(())
}

impl Message {
    /// Decodes a datagram.
    pub fn parse(b: &[u8]) -> Result<Message, ParseError> {
        if b.len() < FIXED + 4 {
            return Err(ParseError::Truncated(FIXED + 4));
        }
        if b[FIXED..FIXED + 4] != COOKIE {
            return Err(ParseError::NoCookie);
        }
        if b[0] != 1 && b[0] != 2 {
            return Err(ParseError::BadOp(b[0]));
        }
        if b[2] > 16 {
            return Err(ParseError::BadHlen(b[2]));
        }
        let mut options = Vec::new();
        parse_options(&b[FIXED + 4..], &mut options)?;
        let mut m = Message {
            op: b[0],
            htype: b[1],
            hlen: b[2],
            hops: b[3],
            xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            secs: u16::from_be_bytes([b[8], b[9]]),
            flags: u16::from_be_bytes([b[10], b[11]]),
            ciaddr: ip(&b[12..16]),
            yiaddr: ip(&b[16..20]),
            siaddr: ip(&b[20..24]),
            giaddr: ip(&b[24..28]),
            chaddr: b[28..44].try_into().unwrap_or([0; 16]),
            sname: trim_nul(&b[44..108]),
            file: trim_nul(&b[108..236]),
            options,
        };
        // Option overload: options continue in `file` and/or `sname`.
        if let Some(ov) = m.option(code::OVERLOAD).and_then(|v| v.first().copied()) {
            let mut extra = Vec::new();
            if ov & 1 != 0 {
                parse_options(&b[108..236], &mut extra)?;
                m.file.clear();
            }
            if ov & 2 != 0 {
                parse_options(&b[44..108], &mut extra)?;
                m.sname.clear();
            }
            for (c, v) in extra {
                match m.options.iter_mut().find(|(k, _)| *k == c) {
                    Some((_, old)) => old.extend_from_slice(&v),
                    None => m.options.push((c, v)),
                }
            }
        }
        Ok(m)
    }

    /// Encodes the message; values over 255 bytes are split (RFC 3396).
    /// The result is at least 300 bytes, as BOOTP relays expect.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(576);
        b.extend_from_slice(&[self.op, self.htype, self.hlen, self.hops]);
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&self.secs.to_be_bytes());
        b.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            b.extend_from_slice(&a.octets());
        }
        b.extend_from_slice(&self.chaddr);
        let mut fixed = |field: &[u8], len: usize| {
            // A full field needs no terminating NUL.
            let n = field.len().min(len);
            b.extend_from_slice(&field[..n]);
            b.resize(b.len() + len - n, 0);
        };
        fixed(&self.sname, 64);
        fixed(&self.file, 128);
        b.extend_from_slice(&COOKIE);
        for (c, v) in &self.options {
            if v.is_empty() {
                b.extend_from_slice(&[*c, 0]);
            }
            for chunk in v.chunks(255) {
                b.push(*c);
                b.push(chunk.len() as u8);
                b.extend_from_slice(chunk);
            }
        }
        b.push(code::END);
        if b.len() < 300 {
            b.resize(300, 0);
        }
        b
    }

    /// The value of option `c`.
    pub fn option(&self, c: u8) -> Option<&[u8]> {
        self.options.iter().find(|(k, _)| *k == c).map(|(_, v)| v.as_slice())
    }

    /// Sets option `c`, replacing an earlier value.
    pub fn set_option(&mut self, c: u8, value: Vec<u8>) {
        match self.options.iter_mut().find(|(k, _)| *k == c) {
            Some((_, v)) => *v = value,
            None => self.options.push((c, value)),
        }
    }

    /// Option 53.
    pub fn message_type(&self) -> Option<MessageType> {
        self.option(code::MESSAGE_TYPE).and_then(|v| v.first()).and_then(|t| MessageType::from_u8(*t))
    }

    /// An option holding one IPv4 address.
    pub fn option_ip(&self, c: u8) -> Option<Ipv4Addr> {
        self.option(c).filter(|v| v.len() == 4).map(ip)
    }

    /// The client's hardware address, when it is Ethernet.
    pub fn mac(&self) -> Option<[u8; 6]> {
        (self.htype == 1 && self.hlen == 6).then(|| self.chaddr[..6].try_into().unwrap_or([0; 6]))
    }

    /// Whether the client asked for broadcast replies.
    pub fn broadcast_flag(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    /// A reply skeleton for this request (RFC 2131 table 3).
    pub fn reply(&self, t: MessageType) -> Message {
        Message {
            op: 2,
            htype: self.htype,
            hlen: self.hlen,
            hops: 0,
            xid: self.xid,
            secs: 0,
            flags: self.flags,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: self.giaddr,
            chaddr: self.chaddr,
            sname: Vec::new(),
            file: Vec::new(),
            options: vec![(code::MESSAGE_TYPE, vec![t as u8])],
        }
    }
}

/// Captured client packets for the tests of this crate.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::COOKIE;

    /// A DHCPDISCOVER from udhcpc (busybox).
    pub(crate) fn discover() -> Vec<u8> {
        let mut b = vec![0u8; 236];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0x3903_f326u32.to_be_bytes());
        b[28..34].copy_from_slice(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        b.extend_from_slice(&COOKIE);
        b.extend_from_slice(&[53, 1, 1]);
        b.extend_from_slice(&[61, 7, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        b.extend_from_slice(&[57, 2, 0x02, 0x40]);
        b.extend_from_slice(&[60, 12]);
        b.extend_from_slice(b"udhcp 1.36.1");
        b.extend_from_slice(&[55, 7, 1, 3, 6, 12, 15, 28, 42]);
        b.push(255);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::discover as udhcpc_discover;
    use super::*;

    #[test]
    fn decodes_a_udhcpc_discover() {
        let m = Message::parse(&udhcpc_discover()).unwrap();
        assert_eq!(m.message_type(), Some(MessageType::Discover));
        assert_eq!(m.mac(), Some([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]));
        assert_eq!(m.option(code::VENDOR_CLASS), Some(&b"udhcp 1.36.1"[..]));
        assert_eq!(m.option(code::PARAMETER_LIST).unwrap().len(), 7);
        assert_eq!(m.xid, 0x3903_f326);
    }

    #[test]
    fn round_trips_and_splits_long_options() {
        let mut m = Message::parse(&udhcpc_discover()).unwrap();
        m.set_option(code::BOOTFILE, vec![b'x'; 600]);
        let encoded = m.encode();
        let back = Message::parse(&encoded).unwrap();
        assert_eq!(back.option(code::BOOTFILE).unwrap().len(), 600, "split into three and joined again");
        assert_eq!(back, m);
    }

    #[test]
    fn full_sname_and_file_fields_round_trip_without_a_nul() {
        // Found by the fuzzer: a 64-byte server name has no terminating NUL.
        let mut m = Message::parse(&udhcpc_discover()).unwrap();
        m.sname = vec![b's'; 64];
        m.file = vec![b'f'; 128];
        assert_eq!(Message::parse(&m.encode()).unwrap(), m);
    }

    #[test]
    fn reads_options_overloaded_into_the_file_field() {
        let mut b = udhcpc_discover();
        b.truncate(b.len() - 1);
        b.extend_from_slice(&[52, 1, 1, 255]);
        b[108..112].copy_from_slice(&[12, 2, b'h', b'1']);
        b[112] = 255;
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.option(code::HOSTNAME), Some(&b"h1"[..]));
        assert!(m.file.is_empty());
    }

    #[test]
    fn rejects_what_is_not_dhcp() {
        assert_eq!(Message::parse(&[1; 100]), Err(ParseError::Truncated(240)));
        let mut b = udhcpc_discover();
        b[236] = 0;
        assert_eq!(Message::parse(&b), Err(ParseError::NoCookie));
        let mut b = udhcpc_discover();
        let n = b.len();
        b[n - 1] = 12;
        b.push(200);
        assert_eq!(Message::parse(&b), Err(ParseError::OptionOverrun(12)));
        let mut b = udhcpc_discover();
        b[2] = 17;
        assert_eq!(Message::parse(&b), Err(ParseError::BadHlen(17)));
    }
}
