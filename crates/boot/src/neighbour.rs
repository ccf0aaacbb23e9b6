//! Making a client's link-layer address known before a reply is unicast
//! to it (RFC 2131 §4.1): a client with no address yet cannot answer ARP,
//! so the kernel is told its Ethernet address for the address being given,
//! with the `SIOCSARP` ioctl (as dnsmasq does), and the entry is removed
//! (`SIOCDARP`) once the reply is out; an entry the host already has is
//! read (`SIOCGARP`) and never replaced. Setting needs `CAP_NET_ADMIN`;
//! without it the caller broadcasts instead. This is the one module of the
//! crate with `unsafe`: the ioctl call itself.
#![allow(unsafe_code)]

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

/// The complete ARP entry for `ip` on `interface`, if there is one.
pub fn get(socket: &impl AsRawFd, interface: &str, ip: Ipv4Addr) -> std::io::Result<Option<[u8; 6]>> {
    let mut req = request(interface, ip, None)?;
    match ioctl(socket, libc::SIOCGARP, &mut req) {
        Ok(()) if req.arp_flags & libc::ATF_COM != 0 => {
            let mut mac = [0u8; 6];
            for (d, s) in mac.iter_mut().zip(req.arp_ha.sa_data) {
                *d = s as u8;
            }
            Ok(Some(mac))
        }
        Ok(()) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets (or replaces) the ARP entry `ip` → `mac` on `interface`; `socket`
/// is any open socket.
pub fn set(socket: &impl AsRawFd, interface: &str, ip: Ipv4Addr, mac: [u8; 6]) -> std::io::Result<()> {
    let mut req = request(interface, ip, Some(mac))?;
    ioctl(socket, libc::SIOCSARP, &mut req)
}

/// Removes the ARP entry for `ip` on `interface`.
pub fn remove(socket: &impl AsRawFd, interface: &str, ip: Ipv4Addr) -> std::io::Result<()> {
    let mut req = request(interface, ip, None)?;
    ioctl(socket, libc::SIOCDARP, &mut req)
}

/// An `arpreq` for `ip` on `interface`, complete with `mac` when given.
fn request(interface: &str, ip: Ipv4Addr, mac: Option<[u8; 6]>) -> std::io::Result<libc::arpreq> {
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad interface name"));
    }
    let empty = libc::sockaddr { sa_family: 0, sa_data: [0; 14] };
    let flags = if mac.is_some() { libc::ATF_COM } else { 0 };
    let mut req = libc::arpreq { arp_pa: empty, arp_ha: empty, arp_flags: flags, arp_netmask: empty, arp_dev: [0; 16] };
    // A sockaddr_in laid over sockaddr: family, port (0), then the address.
    req.arp_pa.sa_family = libc::AF_INET as libc::sa_family_t;
    for (d, s) in req.arp_pa.sa_data[2..6].iter_mut().zip(ip.octets()) {
        *d = s as libc::c_char;
    }
    req.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in req.arp_ha.sa_data.iter_mut().zip(mac.unwrap_or_default()) {
        *d = s as libc::c_char;
    }
    for (d, s) in req.arp_dev.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

fn ioctl(socket: &impl AsRawFd, request: libc::c_ulong, req: &mut libc::arpreq) -> std::io::Result<()> {
    // SAFETY: `req` is a fully initialised `arpreq` borrowed for the whole
    // call; SIOCSARP and SIOCDARP read it and SIOCGARP writes within it, and
    // the descriptor is open for as long as `socket` is borrowed.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), request as _, req as *mut libc::arpreq) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_interface_names_before_the_kernel_sees_them() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for bad in ["", "a-name-longer-than-15", "nul\0"] {
            let e = set(&s, bad, Ipv4Addr::new(10, 0, 0, 9), [2, 0, 0, 0, 0, 9]).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
        }
        // An interface that does not exist is the kernel's error, not a panic.
        assert!(set(&s, "plinth-none0", Ipv4Addr::new(10, 0, 0, 9), [2, 0, 0, 0, 0, 9]).is_err());
    }
}
