//! TFTP packets: `parse` never panics on any input and `encode` writes
//! exactly what `parse` reads back.

/// A TFTP error code (RFC 1350 §5, RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTransferId = 5,
    FileExists = 6,
    NoSuchUser = 7,
    OptionRefused = 8,
}

/// A parsed packet. Strings are raw bytes decoded lossily as UTF-8 only
/// for display; file names keep their bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request.
    Rrq { filename: &'a [u8], mode: &'a [u8], options: Options<'a> },
    /// Write request (refused by Plinth, parsed to answer properly).
    Wrq { filename: &'a [u8], mode: &'a [u8], options: Options<'a> },
    /// Data block.
    Data { block: u16, data: &'a [u8] },
    /// Acknowledgement.
    Ack { block: u16 },
    /// Error.
    Error { code: u16, message: &'a [u8] },
    /// Option acknowledgement.
    Oack { options: Options<'a> },
}

/// Why a packet could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("packet shorter than its header")]
    Truncated,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("string field not terminated by NUL")]
    Unterminated,
    #[error("option without a value")]
    DanglingOption,
    #[error("too many options")]
    TooManyOptions,
}

/// At most this many options are read from one request.
const MAX_OPTIONS: usize = 32;

fn cstr(buf: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    let end = buf.iter().position(|b| *b == 0).ok_or(ParseError::Unterminated)?;
    Ok((&buf[..end], &buf[end + 1..]))
}

/// Option name/value pairs as they appear on the wire.
pub type Options<'a> = Vec<(&'a [u8], &'a [u8])>;

fn options(mut rest: &[u8]) -> Result<Options<'_>, ParseError> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        if out.len() == MAX_OPTIONS {
            return Err(ParseError::TooManyOptions);
        }
        let (name, r) = cstr(rest)?;
        if r.is_empty() {
            return Err(ParseError::DanglingOption);
        }
        let (value, r) = cstr(r)?;
        out.push((name, value));
        rest = r;
    }
    Ok(out)
}

fn u16_at(buf: &[u8], at: usize) -> Result<u16, ParseError> {
    buf.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(ParseError::Truncated)
}

impl<'a> Packet<'a> {
    /// Parses one datagram.
    pub fn parse(buf: &'a [u8]) -> Result<Packet<'a>, ParseError> {
        let op = u16_at(buf, 0)?;
        let body = &buf[2..];
        match op {
            1 | 2 => {
                let (filename, rest) = cstr(body)?;
                let (mode, rest) = cstr(rest)?;
                let options = options(rest)?;
                Ok(if op == 1 {
                    Packet::Rrq { filename, mode, options }
                } else {
                    Packet::Wrq { filename, mode, options }
                })
            }
            3 => Ok(Packet::Data { block: u16_at(buf, 2)?, data: &buf[4..] }),
            4 => Ok(Packet::Ack { block: u16_at(buf, 2)? }),
            5 => {
                let code = u16_at(buf, 2)?;
                // Some clients omit the final NUL; accept the rest as the message.
                let message = match cstr(&buf[4..]) {
                    Ok((m, _)) => m,
                    Err(_) => &buf[4..],
                };
                Ok(Packet::Error { code, message })
            }
            6 => Ok(Packet::Oack { options: options(body)? }),
            other => Err(ParseError::UnknownOpcode(other)),
        }
    }

    /// Appends the encoded packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let put_opts = |out: &mut Vec<u8>, opts: &[(&[u8], &[u8])]| {
            for (k, v) in opts {
                out.extend_from_slice(k);
                out.push(0);
                out.extend_from_slice(v);
                out.push(0);
            }
        };
        match self {
            Packet::Rrq { filename, mode, options } | Packet::Wrq { filename, mode, options } => {
                out.extend_from_slice(&(if matches!(self, Packet::Rrq { .. }) { 1u16 } else { 2 }).to_be_bytes());
                out.extend_from_slice(filename);
                out.push(0);
                out.extend_from_slice(mode);
                out.push(0);
                put_opts(out, options);
            }
            Packet::Data { block, data } => {
                out.extend_from_slice(&3u16.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
                out.extend_from_slice(data);
            }
            Packet::Ack { block } => {
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => {
                out.extend_from_slice(&5u16.to_be_bytes());
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(message);
                out.push(0);
            }
            Packet::Oack { options } => {
                out.extend_from_slice(&6u16.to_be_bytes());
                put_opts(out, options);
            }
        }
    }

    /// An encoded ERROR packet.
    pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + message.len());
        Packet::Error { code: code as u16, message: message.as_bytes() }.encode(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RRQ as sent by iPXE: octet mode with blksize and tsize.
    const IPXE_RRQ: &[u8] = b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001432\x00tsize\x000\x00";
    /// An RRQ as sent by tftp-hpa with `-m binary` and no options.
    const HPA_RRQ: &[u8] = b"\x00\x01/boot/file.bin\x00octet\x00";
    /// An RRQ as sent by a UEFI PXE client (EDK2), with windowsize.
    const EDK2_RRQ: &[u8] = b"\x00\x01ipxe.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00";

    #[test]
    fn parses_real_read_requests() {
        let Packet::Rrq { filename, mode, options } = Packet::parse(IPXE_RRQ).unwrap() else { panic!() };
        assert_eq!((filename, mode), (&b"undionly.kpxe"[..], &b"octet"[..]));
        assert_eq!(options, vec![(&b"blksize"[..], &b"1432"[..]), (&b"tsize"[..], &b"0"[..])]);
        assert!(matches!(Packet::parse(HPA_RRQ).unwrap(), Packet::Rrq { options, .. } if options.is_empty()));
        let Packet::Rrq { options, .. } = Packet::parse(EDK2_RRQ).unwrap() else { panic!() };
        assert_eq!(options.len(), 3);
    }

    #[test]
    fn round_trips_every_packet_kind() {
        let packets = [
            Packet::parse(IPXE_RRQ).unwrap(),
            Packet::Wrq { filename: b"x", mode: b"octet", options: vec![] },
            Packet::Data { block: 65535, data: b"hello" },
            Packet::Data { block: 1, data: b"" },
            Packet::Ack { block: 0 },
            Packet::Error { code: 1, message: b"File not found" },
            Packet::Oack { options: vec![(b"blksize", b"1468")] },
        ];
        for p in packets {
            let mut buf = Vec::new();
            p.encode(&mut buf);
            assert_eq!(Packet::parse(&buf).unwrap(), p);
        }
    }

    #[test]
    fn rejects_malformed_packets() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"", ParseError::Truncated),
            (b"\x00", ParseError::Truncated),
            (b"\x00\x04\x00", ParseError::Truncated),
            (b"\x00\x09\x00\x00", ParseError::UnknownOpcode(9)),
            (b"\x00\x01file", ParseError::Unterminated),
            (b"\x00\x01file\x00octet", ParseError::Unterminated),
            (b"\x00\x01file\x00octet\x00blksize\x00", ParseError::DanglingOption),
            (b"\x00\x01file\x00octet\x00blksize\x00512", ParseError::Unterminated),
        ];
        for (bytes, want) in cases {
            assert_eq!(Packet::parse(bytes).unwrap_err(), *want, "{bytes:?}");
        }
        let mut many = b"\x00\x01f\x00octet\x00".to_vec();
        for i in 0..40 {
            many.extend_from_slice(format!("o{i}\x001\x00").as_bytes());
        }
        assert_eq!(Packet::parse(&many).unwrap_err(), ParseError::TooManyOptions);
    }
}
